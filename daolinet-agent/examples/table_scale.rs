//! The agent's flow table alone (no BPF, no socket): how fast FLOW_MODs
//! go in and out of it at 100k and 1M flows, and what it holds in memory.
//! `cargo xtask bench agent` runs it beside the whole switches, so the
//! userspace share of an install or delete is known.
//!
//! `cargo run --release -p daolinet-agent --example table_scale [N...]`
//! prints one JSON line per size: the rates by the wall clock, and the CPU
//! time per flow installed and deleted (the steadier figure on a shared
//! machine).

use std::time::Instant;

use daolinet_agent::oftable::FlowTable;
use daolinet_agent::table::RuleTable;
use daolinet_openflow as of;

mod common;
use common::{add, cpu_s, Zero};

/// Resident memory of this process in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), String> {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().map_err(|e| format!("size {a:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    let mut c = Zero;
    for n in sizes {
        let mut t = FlowTable::new(RuleTable::new().with_limit(n.saturating_mul(2)), 0);
        let before = rss_kib();
        // Each FLOW_MOD is made where it is applied, as a decoded message
        // would be, so the memory measured is what the table keeps.
        let (t0, c0) = (Instant::now(), cpu_s());
        for i in 0..n {
            t.flow_mod(&add(i, 0xbe), 0, &mut c)
                .map_err(|e| format!("add: {e:?}"))?;
        }
        let (install, install_cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
        let held = rss_kib().saturating_sub(before);
        // Many small deletes by one cookie each, as a controller removing
        // one container's flows does: 1000 flows with cookies of their own.
        let few = n.min(1000);
        let t0 = Instant::now();
        for i in 0..few {
            let fm = of::FlowMod::add(
                of::Match::new()
                    .in_port(1)
                    .eth_type(0x0800)
                    .ipv4_dst(std::net::Ipv4Addr::from(0x0b00_0001 + i)),
            )
            .priority(100)
            .cookie(0x1_0000 + u64::from(i))
            .apply(vec![of::Action::output(2)]);
            t.flow_mod(&fm, 0, &mut c)
                .map_err(|e| format!("add: {e:?}"))?;
        }
        let _ = t0;
        let t0 = Instant::now();
        for i in 0..few {
            let del = of::FlowMod::delete(of::Match::new())
                .cookie_match(0x1_0000 + u64::from(i), u64::MAX);
            t.flow_mod(&del, 0, &mut c)
                .map_err(|e| format!("delete: {e:?}"))?;
        }
        let small_deletes = t0.elapsed().as_secs_f64();
        let (t0, c0) = (Instant::now(), cpu_s());
        let del = of::FlowMod::delete(of::Match::new()).cookie_match(0xbe, u64::MAX);
        let o = t
            .flow_mod(&del, 0, &mut c)
            .map_err(|e| format!("delete: {e:?}"))?;
        let (delete, delete_cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
        if o.touched != n as usize || !t.is_empty() {
            return Err(format!("deleted {} of {n}, {} left", o.touched, t.len()));
        }
        drop(o);
        // What is still resident once the flows are gone, before and after
        // the agent hands the freed heap back (as it does after a bulk
        // delete).
        let left = rss_kib().saturating_sub(before);
        daolinet_agent::engine::give_back_memory();
        let trimmed = rss_kib().saturating_sub(before);
        println!(
            "{{\"flows\":{n},\"install_per_s\":{:.0},\"delete_per_s\":{:.0},\"one_cookie_delete_us\":{:.1},\"install_cpu_us\":{:.3},\"delete_cpu_us\":{:.3},\"rss_kib\":{held},\"rss_deleted_kib\":{left},\"rss_trimmed_kib\":{trimmed}}}",
            f64::from(n) / install,
            f64::from(n) / delete,
            small_deletes / f64::from(few) * 1e6,
            install_cpu / f64::from(n) * 1e6,
            delete_cpu / f64::from(n) * 1e6,
        );
    }
    Ok(())
}
