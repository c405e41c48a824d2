//! Cost of one run of the TC datapath program, measured by the kernel with
//! BPF_PROG_TEST_RUN (`repeat` runs on the same packet, mean ns per run).
//! Needs root; runs the BPF object embedded in the agent (or
//! `$DAOLINET_BPF_OBJECT`).
//!
//! `cargo run --release -p daolinet-tests --example prog_cost [REPEAT]`
//!
//! Each scenario installs two rules that undo each other's rewrite (A:
//! logical -> physical, B: physical -> logical) so that the packet, which
//! the kernel does not restore between runs, matches on every run and gets
//! the full cross-host rewrite each time.
//!
//! The multi-table scenario goes through the pipeline program: 4 tables
//! (goto_table, write_metadata, a metadata match) and a select group whose
//! buckets rewrite the Ethernet destination and output to the uplink,
//! installed from FLOW_MODs and a GROUP_MOD through the agent's own tables.

use anyhow::{anyhow, bail, Result};
use daolinet_agent::groups::GroupTable;
use daolinet_agent::oftable::{Counters, FlowTable, Refs};
use daolinet_agent::table::EntryKey;
use daolinet_common::{
    Action, FlowEntry, FlowKey, MissPolicy, PortInfo, PortKind, PortStats, RuleStats, Subtable,
};
use daolinet_openflow as of;
use daolinet_tests::bpf::{Datapath, TC_ACT_OK, TC_ACT_REDIRECT};

const LA: [u8; 4] = [10, 1, 0, 2];
const LB: [u8; 4] = [10, 1, 0, 3];
const PA: [u8; 4] = [172, 31, 0, 2];
const PB: [u8; 4] = [172, 31, 0, 3];
const UPLINK: u32 = 0xfff0;

fn frame() -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40 + 18, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&LA);
    ip.extend_from_slice(&LB);
    p.extend_from_slice(&ip);
    let tcp = [
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0x12, 0x34, 0, 0,
    ];
    p.extend_from_slice(&tcp);
    p.extend_from_slice(&[0x5a; 18]);
    p
}

fn port(ofport: u32, ifindex: u32, kind: PortKind, slot: u32) -> PortInfo {
    PortInfo {
        ofport,
        ifindex,
        kind: kind as u32,
        miss: MissPolicy::Punt as u32,
        slot,
        ..Default::default()
    }
}

fn entry(prio: u32, id: u32, actions: &[Action]) -> FlowEntry {
    let mut e = FlowEntry {
        priority: prio,
        rule_id: id,
        n_actions: actions.len() as u32,
        ..Default::default()
    };
    e.actions[..actions.len()].copy_from_slice(actions);
    e
}

fn key(src: [u8; 4], dst: [u8; 4]) -> FlowKey {
    FlowKey {
        in_port: 1,
        eth_type: FlowKey::ETH_TYPE_IPV4,
        ipv4_src: src,
        ipv4_dst: dst,
        ..Default::default()
    }
}

fn rewrite(src: [u8; 4], dst: [u8; 4], out: u32) -> Vec<Action> {
    vec![
        Action::set_eth_src([2, 0, 0, 0, 1, 1]),
        Action::set_eth_dst([2, 0, 0, 0, 1, 2]),
        Action::set_ipv4_src(src),
        Action::set_ipv4_dst(dst),
        Action::output(out),
    ]
}

/// Load, register ports, `extra` non-matching subtables walked before the
/// one with the rules; returns mean ns per run.
fn scenario(extra: u32, out: u32, rewrite_ips: bool, repeat: u32) -> Result<u32> {
    let mut dp = Datapath::load()?;
    dp.add_port(port(1, 1, PortKind::Container, 0))?;
    dp.add_port(port(2, 4343, PortKind::Container, 1))?;
    dp.add_port(port(UPLINK, 4242, PortKind::Uplink, 2))?;
    let mask = FlowKey {
        in_port: u32::MAX,
        eth_type: u16::MAX,
        ipv4_src: [0xff; 4],
        ipv4_dst: [0xff; 4],
        ..Default::default()
    };
    let mut subs = Vec::new();
    for i in 0..extra {
        // Higher max priority, never matches (l4_dst 1..): walked first.
        let m = FlowKey {
            l4_dst: u16::MAX,
            eth_type: u16::MAX,
            ..Default::default()
        };
        let mut m = m;
        m.l4_src = i as u16; // distinct masks
        subs.push(Subtable {
            mask: m,
            id: 100 + i,
            max_priority: 2000,
        });
    }
    let main = Subtable {
        mask,
        id: 1,
        max_priority: 1000,
    };
    subs.push(main);
    dp.set_subtables(&subs)?;
    let (a, b) = if rewrite_ips {
        (rewrite(PA, PB, out), rewrite(LA, LB, out))
    } else {
        (
            vec![
                Action::set_eth_dst([2, 0, 0, 0, 0, 0xb]),
                Action::output(out),
            ],
            vec![
                Action::set_eth_dst([2, 0, 0, 0, 0, 0xb]),
                Action::output(out),
            ],
        )
    };
    dp.insert_flow(&main, &key(LA, LB), entry(1000, 1, &a))?;
    dp.insert_flow(&main, &key(PA, PB), entry(1000, 2, &b))?;
    let (ret, ns) = dp.time_tc(&frame(), 1, repeat)?;
    if ret != TC_ACT_REDIRECT {
        bail!("verdict {ret}, expected redirect");
    }
    let hits = dp.rule_stats(1)?.packets + dp.rule_stats(2)?.packets;
    if hits != repeat as u64 {
        bail!("{hits} rule hits for {repeat} runs");
    }
    Ok(ns)
}

/// Counters for the agent's flow table: none (fresh rules).
struct NoCounters;

impl Counters for NoCounters {
    fn rule(&mut self, _: u32, _: &EntryKey) -> RuleStats {
        RuleStats::default()
    }
    fn port(&mut self, _: u32) -> Option<PortStats> {
        None
    }
}

/// The apply-actions of `flow` (ovs-ofctl syntax).
fn actions(flow: &str) -> Result<Vec<of::Action>> {
    let fm: of::FlowMod = flow.parse().map_err(|e| anyhow!("{flow}: {e:?}"))?;
    match fm.instructions.first() {
        Some(of::Instruction::ApplyActions(a)) => Ok(a.clone()),
        _ => bail!("{flow}: no apply-actions"),
    }
}

/// 4 tables and a select group (see the module doc): the packet's
/// connection always picks the same bucket, and the bucket's rewrite is
/// idempotent, so every run does the whole pipeline again.
fn pipeline(repeat: u32) -> Result<u32> {
    let mut dp = Datapath::load()?;
    dp.add_port(port(1, 1, PortKind::Container, 0))?;
    dp.add_port(port(2, 4343, PortKind::Container, 1))?;
    dp.add_port(port(UPLINK, 4242, PortKind::Uplink, 2))?;
    let mut groups = GroupTable::new();
    let bucket = |mac: &str| -> Result<of::Bucket> {
        Ok(of::Bucket {
            weight: 1,
            watch_port: UPLINK,
            watch_group: of::OFPG_ANY,
            actions: actions(&format!(
                "ip actions=set_field:{mac}->eth_dst,output:{UPLINK}"
            ))?,
        })
    };
    let gm = of::GroupMod {
        command: of::OFPGC_ADD,
        group_type: of::OFPGT_SELECT,
        group_id: 1,
        buckets: vec![bucket("02:00:00:00:01:02")?, bucket("02:00:00:00:01:03")?],
    };
    let (ops, _) = groups
        .group_mod(&gm, 0, &|_| true)
        .map_err(|e| anyhow!("group refused: {e:?}"))?;
    dp.apply(&ops)?;
    let ip = |a: [u8; 4]| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
    let flows = [
        format!(
            "priority=100,in_port=1,ip,nw_src={},nw_dst={} actions=goto_table:1",
            ip(LA),
            ip(LB)
        ),
        "table=1,priority=10,ip actions=write_metadata:0x1/0xff,goto_table:2".into(),
        "table=2,priority=10,metadata=0x1/0xff,ip actions=goto_table:3".into(),
        "table=3,priority=10,ip actions=group:1".into(),
    ];
    let mut t = FlowTable::default();
    let has_group = |g: u32| groups.contains(g);
    let refs = Refs {
        group: &has_group,
        meter: &|_| false,
    };
    for f in &flows {
        let fm: of::FlowMod = f.parse().map_err(|e| anyhow!("{f}: {e:?}"))?;
        let o = t
            .flow_mod_with(&fm, 0, &mut NoCounters, refs)
            .map_err(|e| anyhow!("{f}: refused {e:?}"))?;
        dp.apply(&o.ops)?;
    }
    let (ret, ns) = dp.time_tc(&frame(), 1, repeat)?;
    if ret != TC_ACT_REDIRECT {
        bail!("verdict {ret}, expected redirect");
    }
    // Rule ids follow the install order: the first and the last table's.
    for id in [0, 3] {
        let hits = dp.rule_stats(id)?.packets;
        if hits != repeat as u64 {
            bail!("rule {id}: {hits} hits for {repeat} runs");
        }
    }
    Ok(ns)
}

/// The floor: a packet on an interface the datapath does not manage (one
/// port lookup, one counter, pass): the harness and the program's entry.
fn floor(repeat: u32) -> Result<u32> {
    let mut dp = Datapath::load()?;
    let (ret, ns) = dp.time_tc(&frame(), 1, repeat)?;
    if ret != TC_ACT_OK {
        bail!("verdict {ret}, expected pass");
    }
    Ok(ns)
}

fn main() -> Result<()> {
    let repeat: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let only: Option<usize> = std::env::args().nth(2).map(|s| s.parse()).transpose()?;
    if only.is_none_or(|o| o == 9) {
        let mut best = u32::MAX;
        for _ in 0..3 {
            best = best.min(floor(repeat)?);
        }
        println!(
            "{:48} {best:5} ns/packet (best of 3 x {repeat})",
            "unmanaged interface (port lookup, pass): floor"
        );
    }
    for (i, (name, extra, out, ips)) in [
        ("cross-host rewrite to uplink, 1 subtable", 0, UPLINK, true),
        ("eth rewrite to container (peer), 1 subtable", 0, 2, false),
        ("cross-host rewrite, 8 subtables walked", 7, UPLINK, true),
        ("cross-host rewrite, 32 subtables walked", 31, UPLINK, true),
    ]
    .into_iter()
    .enumerate()
    {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let mut best = u32::MAX;
        for _ in 0..3 {
            best = best.min(scenario(extra, out, ips, repeat)?);
        }
        println!("{name:48} {best:5} ns/packet (best of 3 x {repeat})");
    }
    if only.is_none_or(|o| o == 4) {
        let mut best = u32::MAX;
        for _ in 0..3 {
            best = best.min(pipeline(repeat)?);
        }
        println!(
            "{:48} {best:5} ns/packet (best of 3 x {repeat})",
            "4 tables and a select group (pipeline program)"
        );
    }
    Ok(())
}
