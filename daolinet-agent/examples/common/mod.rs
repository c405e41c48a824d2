//! What the flow-table examples (`table_scale`, `delete_path`) share: the
//! benchmark's flows, a counter source for a fresh table, a thread's CPU
//! time.

use daolinet_agent::oftable::Counters;
use daolinet_agent::table::EntryKey;
use daolinet_common::{PortStats, RuleStats};
use daolinet_openflow as of;

/// No counters (a fresh table counted nothing).
pub struct Zero;

impl Counters for Zero {
    fn rule(&mut self, _: u32, _: &EntryKey) -> RuleStats {
        RuleStats::default()
    }
    fn port(&mut self, _: u32) -> Option<PortStats> {
        None
    }
}

/// The bench's flows: in_port=1, ip, nw_dst=10.0.0.1 + i, output:2.
pub fn add(i: u32, cookie: u64) -> of::FlowMod {
    let dst = std::net::Ipv4Addr::from(0x0a00_0001 + i);
    of::FlowMod::add(of::Match::new().in_port(1).eth_type(0x0800).ipv4_dst(dst))
        .priority(100)
        .cookie(cookie)
        .apply(vec![of::Action::output(2)])
}

/// This thread's time on a CPU so far, in seconds
/// (`/proc/thread-self/schedstat`): unlike the wall clock, it leaves out
/// the time other jobs on a shared machine take the CPU (0 if unreadable).
pub fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}
