//! `cargo xtask bench openflow`: decode and encode rates of the OpenFlow
//! codec (PACKET_IN and FLOW_MOD, messages/s on one core), side by side with
//! a floor reference (copying the bytes into a `Vec`), recorded in the
//! `openflow` section of BENCHMARKS.md.

use anyhow::{Context, Result};

use crate::util::{cargo, output, step};

/// The command that produces the numbers (recorded with them).
const COMMAND: &str = "cargo run --release -p daolinet-openflow --example codec_bench -- 2";

/// Run the codec benchmark and record it.
pub fn run() -> Result<()> {
    step("benchmarking the OpenFlow codec (release build, one core)");
    let table = output(cargo().args([
        "run",
        "--release",
        "-q",
        "-p",
        "daolinet-openflow",
        "--example",
        "codec_bench",
        "--",
        "2",
    ]))
    .context("running the codec benchmark")?;
    print!("{table}");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let body = format!(
        "## OpenFlow codec (daolinet-openflow)\n\n\
         Messages per second on one core ({cpu}), single-threaded, all in one \
         process: per second of the thread's on-CPU time \
         (`/proc/thread-self/schedstat`), the median of 5 rounds of 0.4 s, so \
         that time spent waiting for a CPU on this shared, noisy 2-core machine \
         does not count; the last column is the decode rate per wall-clock second \
         of the same rounds (lower whenever other jobs compete for the cores). \
         Decoding includes dropping the decoded message. FLOW_MOD is the \
         DaoliNet cross-host rewrite flow (6 match fields: in_port, eth_type, \
         eth_src/dst, ipv4_src/dst; 4 set_field, dec_ttl, output), the minimal \
         FLOW_MOD has one match field and one output; PACKET_IN carries a \
         128-byte frame. The reference column copies the message bytes into a \
         fresh `Vec` (one allocation and a memcpy), the least any decoder \
         producing owned values must do.\n\n\
         Command: `{COMMAND}` (run by `cargo xtask bench openflow`).\n\n{table}"
    );
    crate::benchmarks::update_section("openflow", &body)
}
