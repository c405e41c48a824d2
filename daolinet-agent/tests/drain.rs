//! A delete that empties a subtable is complete for every packet once its
//! map operations are written (when the agent sends the BARRIER_REPLY),
//! while the subtable's entries are still being removed in the background;
//! and entries a stopped agent left are removed when the next one starts.
//! On the real datapath: its TC program run with BPF_PROG_TEST_RUN.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expect is a failed test

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};
use daolinet_agent::datapath::{BpfObject, Datapath};
use daolinet_agent::oftable::{Counters, FlowTable};
use daolinet_agent::table::{EntryKey, MapOp};
use daolinet_common::{
    maps as names, FlowEntry, FlowMapKey, MissPolicy, PortInfo, PortKind, PortStats, RuleStats,
};
use daolinet_openflow::{self as of, FlowMod};
use daolinet_testlab::{require, Bpffs, Need};

/// Flows of cookie 3, alone in their subtable (they match the IPv4
/// source only).
const N: u16 = 20_000;
const IN_SLOT: u32 = 1;
const OUT_SLOT: u32 = 2;
/// `TC_ACT_REDIRECT`: the program sent the packet to a port.
const TC_ACT_REDIRECT: u32 = 7;

struct NoCounters;

impl Counters for NoCounters {
    fn rule(&mut self, _: u32, _: &EntryKey) -> RuleStats {
        RuleStats::default()
    }
    fn port(&mut self, _: u32) -> Option<PortStats> {
        None
    }
}

fn port(ofport: u32, ifindex: u32, slot: u32) -> PortInfo {
    PortInfo {
        ofport,
        ifindex,
        kind: PortKind::Container as u32,
        miss: MissPolicy::Punt as u32,
        slot,
        allowed_ipv4: [0; 4],
        allowed_mac: [0; 6],
        flags: 0,
    }
}

/// An Ethernet/IPv4/UDP frame from `src` to `dst` (checksums left zero:
/// the classifier does not look at them).
fn udp_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let payload = b"drain";
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::new();
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0]);
    f.extend_from_slice(&[64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, udp_len as u8, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Run the TC program on `frame` arriving on `lo` (ifindex 1): its verdict.
fn run_tc(dp: &mut Datapath, frame: &[u8]) -> u32 {
    // `struct __sk_buff` with ifindex (offset 40) 1.
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&1u32.to_ne_bytes());
    let prog = dp.ebpf_mut().program(names::PROG_TC).expect("TC program");
    let fd = prog.fd().expect("program fd").as_fd().as_raw_fd();
    daolinet_testlab::prog_test_run(fd, frame, Some(&ctx), 1)
        .expect("BPF_PROG_TEST_RUN")
        .retval
}

/// Entries in the compact classifier map, read through its pin.
fn entries(pin_dir: &Path) -> usize {
    let m = MapData::from_pin(pin_dir.join(names::FLOWS)).expect("pinned DL_FLOWS");
    let m: HashMap<MapData, FlowMapKey, FlowEntry> =
        HashMap::try_from(aya::maps::Map::HashMap(m)).expect("hash map");
    m.keys().filter(|k| k.is_ok()).count()
}

fn flow_mod(t: &mut FlowTable, fm: &FlowMod) -> Vec<MapOp> {
    t.flow_mod(fm, 0, &mut NoCounters)
        .expect("flow accepted")
        .ops
}

fn load(pin_dir: &Path) -> Datapath {
    let object = BpfObject::choose(None).bytes().expect("BPF object");
    Datapath::load(&object, pin_dir, 65_536).expect("loading the datapath")
}

#[test]
fn a_deleted_subtable_matches_nothing_at_once_and_its_entries_go_in_the_background() {
    let Some(_ready) = require(&[Need::Root, Need::BpfObject]) else {
        return;
    };
    let tag = daolinet_testlab::fresh_tag();
    let bpffs = Bpffs::mount(PathBuf::from(format!("/run/daolinet-{tag}-bpffs")));
    let pin_dir = bpffs.path().join("daolinet");
    let mut dp = load(&pin_dir);
    dp.write_port(&port(1, 1, IN_SLOT)).expect("port");
    dp.write_port(&port(2, 4343, OUT_SLOT)).expect("port");

    // N flows of cookie 3 (one subtable) and one of cookie 2 (another).
    let mut t = FlowTable::default();
    let mut ops = Vec::new();
    for i in 0..N {
        let [x, y] = i.to_be_bytes();
        let fm: FlowMod = format!("cookie=3,priority=20,ip,nw_src=10.3.{x}.{y} actions=output:2")
            .parse()
            .unwrap();
        ops.extend(flow_mod(&mut t, &fm));
    }
    let fm: FlowMod = "cookie=2,priority=10,ip,nw_dst=10.2.0.1 actions=output:2"
        .parse()
        .unwrap();
    ops.extend(flow_mod(&mut t, &fm));
    dp.apply_batched(&ops).expect("flows written");
    assert_eq!(entries(&pin_dir), usize::from(N) + 1);
    let mine = udp_frame([10, 3, 0, 7], [10, 9, 9, 9]);
    let other = udp_frame([10, 1, 0, 9], [10, 2, 0, 1]);
    assert_eq!(
        run_tc(&mut dp, &mine),
        TC_ACT_REDIRECT,
        "forwarded by its flow"
    );
    assert_eq!(run_tc(&mut dp, &other), TC_ACT_REDIRECT);
    let sent = dp.port_stats(OUT_SLOT).expect("counters").tx_packets;

    // The delete by cookie, written as the agent writes it before its
    // BARRIER_REPLY; the drain held, as if it had not run yet.
    dp.hold_drains(true).unwrap();
    let del = FlowMod::delete(of::Match::new()).cookie_match(3, u64::MAX);
    let ops = flow_mod(&mut t, &del);
    let drained: usize = ops
        .iter()
        .map(|o| match o {
            MapOp::DrainFlows(d) => d.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(drained, usize::from(N));
    dp.apply_batched(&ops).expect("delete written");
    assert!(dp.draining());
    assert_eq!(entries(&pin_dir), usize::from(N) + 1, "not removed yet");
    assert_ne!(
        run_tc(&mut dp, &mine),
        TC_ACT_REDIRECT,
        "a packet of a deleted flow is forwarded while its entry waits for the drain"
    );
    assert_eq!(dp.port_stats(OUT_SLOT).unwrap().tx_packets, sent);
    assert_eq!(
        run_tc(&mut dp, &other),
        TC_ACT_REDIRECT,
        "the other flow stays"
    );

    // Released: a thread removes them, the loop is not waited for.
    dp.hold_drains(false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dp.draining() {
        assert!(Instant::now() < deadline, "the drain did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(entries(&pin_dir), 1);
    assert_eq!(run_tc(&mut dp, &other), TC_ACT_REDIRECT);

    // The same mask again: a new subtable, forwarding again.
    let fm: FlowMod = "cookie=3,priority=20,ip,nw_src=10.3.0.7 actions=output:2"
        .parse()
        .unwrap();
    dp.apply_batched(&flow_mod(&mut t, &fm)).unwrap();
    assert_eq!(run_tc(&mut dp, &mine), TC_ACT_REDIRECT);

    // An agent stopped before its drain ran (killed: nothing finishes it)
    // leaves the entries; the next one deletes them when it starts, and
    // keeps the rules that are in a subtable list.
    dp.hold_drains(true).unwrap();
    let ops = flow_mod(&mut t, &del);
    dp.apply_batched(&ops).unwrap();
    assert_eq!(entries(&pin_dir), 2);
    std::mem::forget(dp);
    let mut dp = load(&pin_dir);
    let saved = dp.saved_rules().expect("rules read back");
    assert_eq!(saved.rules.len(), 1, "the cookie 2 flow is kept");
    assert_eq!(entries(&pin_dir), 1, "the entry left behind is gone");
    assert_ne!(run_tc(&mut dp, &mine), TC_ACT_REDIRECT);
    assert_eq!(run_tc(&mut dp, &other), TC_ACT_REDIRECT);
    drop(dp);
    drop(bpffs);
}
