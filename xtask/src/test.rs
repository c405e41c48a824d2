//! `cargo xtask test`: setup + build-ebpf + the whole test suite, once or
//! `--repeat N` times (a stability run), optionally with one core kept busy
//! (`--load`) as on a loaded CI machine.
//!
//! The suite is always the same command, [`suite`]: `cargo test
//! --workspace` with `CI=true` (unless `CI` is already set), so that a
//! privileged test that cannot run fails instead of being skipped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{cargo, display, run as sh, step, workspace_root};

/// What `cargo xtask test` was asked to do.
pub struct Opts {
    /// Run `setup` first.
    pub setup: bool,
    /// Seconds per fuzz target afterwards (0: no fuzzing).
    pub fuzz_seconds: u64,
    /// How many times to run the suite.
    pub repeat: u32,
    /// Keep one core busy while the suite runs.
    pub load: bool,
}

/// Run everything CI runs.
pub fn run(opts: &Opts) -> Result<()> {
    if opts.setup {
        crate::setup::run()?;
    }
    // Built in the open first (compiler output on the terminal); the
    // agent's build script then finds the object up to date and embeds it,
    // and the tests load what the agent embeds.
    crate::build_ebpf::run(true)?;
    if opts.repeat <= 1 && !opts.load {
        step("running the test suite (unit, codec, privileged namespace tests)");
        sh(&mut suite())?;
    } else {
        stability(opts.repeat.max(1), opts.load)?;
    }
    if opts.fuzz_seconds > 0 {
        step("short fuzz run");
        crate::fuzz::run(opts.fuzz_seconds, None)?;
    }
    Ok(())
}

/// The test suite command: every package but the BPF one, every test
/// binary even after a failure, privileged tests under the CI skip rule.
pub fn suite() -> Command {
    let mut c = cargo();
    c.args([
        "test",
        "--workspace",
        "--exclude",
        "daolinet-ebpf",
        "--no-fail-fast",
    ]);
    if std::env::var_os("CI").is_none() {
        c.env("CI", "true");
    }
    c
}

/// One run of the suite: its result and the failures it reported.
struct RunResult {
    ok: bool,
    took: Duration,
    /// `binary: test` of each failed test, and `target` lines of failed
    /// test binaries (a crash names no test).
    failures: Vec<String>,
}

/// Build once, then run the suite `n` times; report each run and which
/// tests failed in which runs. Fails when any run failed.
fn stability(n: u32, load: bool) -> Result<()> {
    step("building the test suite once");
    sh(suite().arg("--no-run"))?;
    let logs = logs_dir();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let _load = if load { Some(Load::start()?) } else { None };
    let what = format!(
        "`{}`{}",
        display(&suite()),
        if load { " with one core kept busy" } else { "" }
    );
    let mut results = Vec::new();
    for i in 1..=n {
        step(&format!("run {i} of {n}: {what}"));
        let log = logs.join(format!("run-{i}.log"));
        let r = run_logged(&mut suite(), &log)?;
        eprintln!(
            "    run {i}: {} in {:.0} s (log: {})",
            if r.ok { "ok" } else { "FAILED" },
            r.took.as_secs_f64(),
            log.display()
        );
        results.push(r);
    }
    let report = summary(&results, &what);
    step("stability summary");
    eprint!("{report}");
    let path = logs.join("summary.txt");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!(
            "{failed} of {n} runs failed (summary in {})",
            path.display()
        );
    }
    Ok(())
}

/// The report: each run's result, then every failure with the runs it
/// happened in.
fn summary(results: &[RunResult], what: &str) -> String {
    let n = results.len();
    let ok = results.iter().filter(|r| r.ok).count();
    let mut out = format!("{ok} of {n} runs passed: {what}\n");
    for (i, r) in results.iter().enumerate() {
        out.push_str(&format!(
            "  run {}: {} ({:.0} s){}\n",
            i + 1,
            if r.ok { "ok" } else { "FAILED" },
            r.took.as_secs_f64(),
            if r.failures.is_empty() {
                String::new()
            } else {
                format!(": {}", r.failures.join(", "))
            }
        ));
    }
    let mut seen: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, r) in results.iter().enumerate() {
        for f in &r.failures {
            match seen.iter_mut().find(|(x, _)| x == f) {
                Some(e) => e.1.push(i + 1),
                None => seen.push((f, vec![i + 1])),
            }
        }
    }
    if !seen.is_empty() {
        out.push_str("failures:\n");
        for (f, runs) in seen {
            let list: Vec<String> = runs.iter().map(|r| r.to_string()).collect();
            out.push_str(&format!(
                "  {f}: failed in run {} ({} of {n})\n",
                list.join(", "),
                runs.len()
            ));
        }
    }
    out
}

/// Run `cmd` with stdout and stderr merged (in order) into the terminal
/// and `log`, and pick the failures out of the output.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<RunResult> {
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let started = Instant::now();
    let mut child = cmd
        .stdout(writer.try_clone().context("cloning a pipe")?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    // Drop our copies of the pipe's write end (held by `cmd`) so that the
    // reader sees the end of the output when the child is done.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut failures = Failures::default();
    let stdout = std::io::stdout();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading the test output")?;
        let _ = writeln!(stdout.lock(), "{line}");
        writeln!(file, "{line}").with_context(|| format!("writing {}", log.display()))?;
        failures.line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok(RunResult {
        ok: status.success(),
        took: started.elapsed(),
        failures: failures.finish(status.success()),
    })
}

/// Failures seen in `cargo test` output.
#[derive(Default)]
struct Failures {
    /// The test binary whose output is being read.
    binary: String,
    tests: Vec<String>,
    /// Binaries cargo reported as failed (`to rerun pass ...`).
    targets: Vec<String>,
}

impl Failures {
    fn line(&mut self, line: &str) {
        let l = line.trim();
        // `Running tests/openflow.rs (target/debug/deps/openflow-0123abcd)`
        if let Some(rest) = l.strip_prefix("Running ") {
            let exe = rest
                .rsplit_once('(')
                .map(|(_, e)| e.trim_end_matches(')'))
                .unwrap_or(rest);
            let stem = Path::new(exe)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.binary = match stem.rsplit_once('-') {
                Some((name, _hash)) => name.to_string(),
                None => stem,
            };
        } else if let Some(krate) = l.strip_prefix("Doc-tests ") {
            self.binary = krate.to_string();
        } else if let Some(test) = l
            .strip_prefix("test ")
            .and_then(|t| t.strip_suffix(" ... FAILED"))
        {
            self.tests.push(format!("{}::{test}", self.binary));
        } else if let Some(t) = l
            .split_once("to rerun pass `")
            .and_then(|(_, t)| t.split('`').next())
        {
            self.targets.push(t.to_string());
        }
    }

    /// The failures: failed tests, then failed binaries that named no
    /// failed test (a crash, a timeout), or "cargo test failed" when the
    /// run failed without naming anything (a build error).
    fn finish(self, ok: bool) -> Vec<String> {
        let mut out = self.tests;
        for t in self.targets {
            // `-p daolinet-agent --test openflow`, `--lib`, `--doc`.
            let words: Vec<&str> = t.split(' ').collect();
            let bin = match words.as_slice() {
                ["-p", pkg, "--lib" | "--doc"] => pkg,
                [.., last] => last,
                [] => "",
            }
            .replace('-', "_");
            if !out.iter().any(|f| f.starts_with(&format!("{bin}::"))) {
                out.push(format!("binary `{t}`"));
            }
        }
        if out.is_empty() && !ok {
            out.push("cargo test failed (see the log)".into());
        }
        out
    }
}

/// A busy loop on one core for as long as it lives (killed on drop).
struct Load(Child);

impl Load {
    fn start() -> Result<Load> {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the busy loop")?;
        eprintln!("    load: busy loop on one core (pid {})", child.id());
        Ok(Load(child))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The logs directory of stability runs.
pub fn logs_dir() -> PathBuf {
    workspace_root().join("target/xtask/test-runs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures_of(out: &str, ok: bool) -> Vec<String> {
        let mut f = Failures::default();
        for l in out.lines() {
            f.line(l);
        }
        f.finish(ok)
    }

    #[test]
    fn failed_tests_are_named_with_their_binary() {
        let out = "\
     Running tests/openflow.rs (target/debug/deps/openflow-0123456789abcdef)
test a ... ok
test packet_out ... FAILED
error: test failed, to rerun pass `-p daolinet-agent --test openflow`
     Running tests/ovs.rs (target/debug/deps/ovs-0123456789abcdef)
error: test failed, to rerun pass `-p daolinet-controller --test ovs`
";
        assert_eq!(
            failures_of(out, false),
            vec![
                "openflow::packet_out".to_string(),
                "binary `-p daolinet-controller --test ovs`".to_string()
            ]
        );
        assert!(failures_of("test a ... ok\n", true).is_empty());
        assert_eq!(
            failures_of("error[E0425]: cannot find value\n", false),
            vec!["cargo test failed (see the log)".to_string()]
        );
    }

    #[test]
    fn summary_lists_each_failure_with_its_runs() {
        let r = |ok, f: &[&str]| RunResult {
            ok,
            took: Duration::from_secs(60),
            failures: f.iter().map(|s| s.to_string()).collect(),
        };
        let s = summary(
            &[
                r(true, &[]),
                r(false, &["ovs::x"]),
                r(false, &["ovs::x", "a::b"]),
            ],
            "`cargo test`",
        );
        assert!(s.starts_with("1 of 3 runs passed: `cargo test`\n"), "{s}");
        assert!(s.contains("  run 2: FAILED (60 s): ovs::x\n"), "{s}");
        assert!(s.contains("  ovs::x: failed in run 2, 3 (2 of 3)\n"), "{s}");
        assert!(s.contains("  a::b: failed in run 3 (1 of 3)\n"), "{s}");
    }
}
