//! A delete by cookie of N flows through the agent's flow table and its BPF
//! maps, without the OpenFlow socket: how long until the BARRIER_REPLY
//! could go (the table's removal and the map operations written), with the
//! entries of the emptied subtable drained in the background as the agent
//! does, and with them deleted before the reply (as before the drain), in
//! the same run; and how long the drain then takes. The installs before
//! each delete are timed too (the table and the batched map writes, in
//! runs of 16k operations; `DL_INSTALL=read`: a 256 KiB read's FLOW_MODs
//! handled, then written; `DL_INSTALL=ahead`: written ahead in parts as
//! the agent does, see `Datapath::write_ahead`).
//!
//! `sudo cargo run --release -p daolinet-agent --example delete_path [N...]`
//! (root, and the BPF object the agent embeds or `$DAOLINET_BPF_OBJECT`)
//! prints one JSON line per size and way, two rounds. The maps are pinned
//! in a bpffs of its own, unmounted at the end.
//!
//! To profile the drained delete's path to the reply alone:
//! `mkfifo /tmp/ctl && DL_PERF_CTL=/tmp/ctl perf record -D -1 --control
//! fifo:/tmp/ctl -g .../delete_path` (the example enables perf's events
//! for that part only).

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use daolinet_agent::datapath::{BpfObject, Datapath};
use daolinet_agent::oftable::FlowTable;
use daolinet_agent::table::{MapOp, RuleTable};
use daolinet_openflow as of;

mod common;
use common::{add, cpu_s, Zero};

/// The process's time on a CPU so far (every thread: the map writer's
/// too), in seconds.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage(2) fills the struct it is given.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) } != 0 {
        return 0.0;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(r.ru_utime) + s(r.ru_stime)
}

/// Tell `perf record --control fifo:$DL_PERF_CTL` to count (`enable`)
/// or not (`disable`); nothing without `DL_PERF_CTL`.
fn perf(cmd: &str) {
    use std::io::Write;
    if let Some(path) = std::env::var_os("DL_PERF_CTL") {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = writeln!(f, "{cmd}");
        }
        // perf reads the fifo on its own time.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The drained entries deleted by the operations themselves instead.
fn synchronous(ops: Vec<MapOp>) -> Vec<MapOp> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            MapOp::DrainFlows(d) => out.extend(d.keys().map(MapOp::DelFlow)),
            op => out.push(op),
        }
    }
    out
}

/// How the installs are written.
#[derive(Clone, Copy, Debug)]
enum Install {
    /// In runs of 16k operations.
    Batch,
    /// As the agent did before writing ahead: the FLOW_MODs of one read
    /// ([`PER_READ`]) written after they are all handled.
    Read,
    /// As the agent does: parts of [`WRITE_AHEAD`] operations written on
    /// the writer thread while the next are handled, the read's rest
    /// written and all of it waited for at its end.
    Ahead,
}

/// The FLOW_MODs of one 256 KiB read (104 bytes each), as the agent
/// reads; `DL_PER_READ` sets another (630: 64 KiB).
const PER_READ: u32 = 2_520;

/// The engine's part size for writing ahead.
const WRITE_AHEAD: usize = 128;

fn one(dp: &mut Datapath, n: u32, drained: bool, way: Install) -> Result<String> {
    let per_read = std::env::var("DL_PER_READ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PER_READ);
    let mut c = Zero;
    let mut t = FlowTable::new(RuleTable::new().with_limit(dp.capacity()), 0);
    let mut ops = Vec::new();
    let (i0, ic0, ip0) = (Instant::now(), cpu_s(), process_cpu_s());
    for i in 0..n {
        let o = t
            .flow_mod(&add(i, 0xbe), 0, &mut c)
            .map_err(|e| anyhow!("add: {e:?}"))?;
        ops.extend(o.ops);
        match way {
            Install::Batch if ops.len() >= 16_384 => {
                dp.apply_batched(&ops)?;
                ops.clear();
            }
            Install::Read | Install::Ahead if (i + 1) % per_read == 0 => {
                dp.apply_batched(&ops)?;
                ops.clear();
            }
            Install::Ahead if ops.len() >= WRITE_AHEAD => dp.write_ahead(&mut ops),
            _ => {}
        }
    }
    dp.apply_batched(&ops)?;
    drop(ops);
    let (install, install_cpu) = (i0.elapsed().as_secs_f64(), cpu_s() - ic0);
    let install_all_cpu = process_cpu_s() - ip0;
    if drained {
        perf("enable");
    }
    let (t0, c0) = (Instant::now(), cpu_s());
    let del = of::FlowMod::delete(of::Match::new()).cookie_match(0xbe, u64::MAX);
    let mut o = t
        .flow_mod(&del, 0, &mut c)
        .map_err(|e| anyhow!("delete: {e:?}"))?;
    if !drained {
        o.ops = synchronous(std::mem::take(&mut o.ops));
    }
    let table = t0.elapsed().as_secs_f64();
    dp.apply_batched(&o.ops)?;
    drop(o);
    let (reply, reply_cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
    if drained {
        perf("disable");
    }
    let t1 = Instant::now();
    dp.finish_drains()?;
    let drain = t1.elapsed().as_secs_f64();
    // Every entry went.
    let left = {
        let m = dp
            .ebpf_mut()
            .map(daolinet_common::maps::FLOWS)
            .context("the flow map")?;
        let m: aya::maps::HashMap<_, daolinet_common::FlowMapKey, daolinet_common::FlowEntry> =
            aya::maps::HashMap::try_from(m)?;
        m.keys().count()
    };
    anyhow::ensure!(left == 0, "{left} flow entries left after the delete");
    daolinet_agent::engine::give_back_memory();
    let nf = f64::from(n);
    Ok(format!(
        "{{\"flows\":{n},\"install\":\"{way:?}\",\"install_per_s\":{:.0},\"install_cpu_us\":{:.3},\"install_all_cpu_us\":{:.3},\"drained\":{drained},\"to_reply_per_s\":{:.0},\"to_reply_cpu_us\":{:.3},\"table_us\":{:.3},\"maps_us\":{:.3},\"drain_after_us\":{:.3}}}",
        nf / install,
        install_cpu / nf * 1e6,
        install_all_cpu / nf * 1e6,
        nf / reply,
        reply_cpu / nf * 1e6,
        table / nf * 1e6,
        (reply - table) / nf * 1e6,
        drain / nf * 1e6,
    ))
}

fn main() -> Result<()> {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().with_context(|| format!("size {a:?}")))
        .collect::<Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    let way = match std::env::var("DL_INSTALL").as_deref() {
        Ok("read") => Install::Read,
        Ok("ahead") => Install::Ahead,
        Ok("batch") | Err(_) => Install::Batch,
        Ok(other) => anyhow::bail!("DL_INSTALL={other:?}: batch, read or ahead"),
    };
    let most = sizes.iter().copied().max().unwrap_or(1);
    let tag = daolinet_testlab::fresh_tag();
    let bpffs = daolinet_testlab::Bpffs::mount(std::path::PathBuf::from(format!(
        "/run/daolinet-{tag}-bpffs"
    )));
    let object = BpfObject::choose(None).bytes()?;
    let mut dp = Datapath::load(&object, &bpffs.path().join("daolinet"), most)?;
    for _round in 0..2 {
        for &n in &sizes {
            for drained in [true, false] {
                println!("{}", one(&mut dp, n, drained, way)?);
            }
        }
    }
    drop(dp);
    drop(bpffs);
    Ok(())
}
