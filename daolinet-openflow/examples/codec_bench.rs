//! Codec throughput on one core: decode and encode rates of a typical
//! DaoliNet FLOW_MOD (the cross-host rewrite flow), a minimal FLOW_MOD
//! (in_port match, one output) and a PACKET_IN (a 128-byte punted frame),
//! next to a floor reference (copying the message bytes into a fresh `Vec`,
//! the least any owned decoder must do).
//!
//! Run: `cargo run --release -p daolinet-openflow --example codec_bench`
//! (or `cargo xtask bench openflow`, which records the table in BENCHMARKS.md).
//! Prints a Markdown table on stdout. Rates are per second of the thread's
//! on-CPU time (`/proc/thread-self/schedstat`), the median of 5 rounds, so
//! that time spent waiting for a CPU on a shared machine does not count; the
//! wall-clock decode rate is printed next to it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use daolinet_openflow::*;

fn flow_mod() -> Message {
    let fm: FlowMod = "cookie=0xd0,priority=100,idle_timeout=10,send_flow_rem,in_port=1,ip,\
                       dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02,\
                       nw_src=192.168.1.10,nw_dst=192.168.2.20 \
                       actions=set_field:10.0.0.10->ip_src,set_field:10.0.0.20->ip_dst,\
                       set_field:0a:00:00:00:00:01->eth_src,set_field:0a:00:00:00:00:02->eth_dst,\
                       dec_ttl,output:2"
        .parse()
        .unwrap_or_default();
    Message::FlowMod(fm)
}

fn flow_mod_simple() -> Message {
    Message::FlowMod(
        FlowMod::add(Match::new().in_port(1))
            .priority(10)
            .apply(vec![Action::output(2)]),
    )
}

fn packet_in() -> Message {
    let frame: Vec<u8> = (0..128u8).collect();
    Message::PacketIn(PacketIn::new(3, OFPR_NO_MATCH, frame))
}

/// Nanoseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`,
/// first field), or None where that file does not exist.
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A measured rate: operations per second of on-CPU time (the per-core
/// rate; falls back to wall-clock time without schedstat) and per second of
/// wall-clock time (which also counts the time spent waiting for a CPU on a
/// shared machine).
#[derive(Clone, Copy)]
struct Rate {
    cpu: f64,
    wall: f64,
}

/// Run `f` in batches for about `dur`, split in `ROUNDS` rounds; return the
/// median round (by CPU-time rate), which shrugs off rounds disturbed by
/// other processes on the shared machine.
fn rate(dur: Duration, mut f: impl FnMut()) -> Rate {
    const BATCH: u64 = 10_000;
    const ROUNDS: u32 = 5;
    // Warm up.
    for _ in 0..BATCH {
        f();
    }
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let cpu0 = cpu_ns();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur / ROUNDS {
            for _ in 0..BATCH {
                f();
            }
            n += BATCH;
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = match (cpu0, cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => wall,
        };
        rounds.push(Rate {
            cpu: n as f64 / cpu,
            wall: n as f64 / wall,
        });
    }
    rounds.sort_by(|a, b| a.cpu.total_cmp(&b.cpu));
    rounds[rounds.len() / 2]
}

fn mps(r: f64) -> String {
    format!("{:.2} M/s", r / 1e6)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let dur = Duration::from_secs_f64(secs);
    println!(
        "| message | bytes | decode | encode | reference: copy to Vec | decode / copy | decode, wall clock |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut fm_decode = 0.0;
    let mut simple_decode = 0.0;
    for (name, msg) in [
        ("FLOW_MOD", flow_mod()),
        ("FLOW_MOD (in_port, output)", flow_mod_simple()),
        ("PACKET_IN", packet_in()),
    ] {
        let Ok(bytes) = msg.to_bytes(1) else {
            eprintln!("cannot encode {name}");
            std::process::exit(1);
        };
        match decode(&bytes) {
            Ok(Some((f, _))) if f.message == msg => {}
            other => {
                eprintln!("{name} does not round-trip: {other:?}");
                std::process::exit(1);
            }
        }
        let dec = rate(dur, || {
            let r = decode(black_box(&bytes));
            black_box(&r);
        });
        let mut buf = BytesMut::with_capacity(4096);
        let enc = rate(dur, || {
            buf.clear();
            let r = encode(black_box(&msg), 1, &mut buf);
            black_box((&r, &buf));
        });
        let copy = rate(dur, || {
            let v = black_box(&bytes[..]).to_vec();
            black_box(&v);
        });
        if name == "FLOW_MOD" {
            fm_decode = dec.cpu;
        } else if name.starts_with("FLOW_MOD") {
            simple_decode = dec.cpu;
        }
        println!(
            "| {name} | {} | **{}** | {} | {} | {:.1}x slower | {} |",
            bytes.len(),
            mps(dec.cpu),
            mps(enc.cpu),
            mps(copy.cpu),
            copy.cpu / dec.cpu,
            mps(dec.wall),
        );
    }
    println!();
    println!(
        "Target: >= 5 M FLOW_MOD decodes/s on one core. Rewrite FLOW_MOD: {} ({}); \
         minimal FLOW_MOD: {} ({}).",
        if fm_decode >= 5e6 { "met" } else { "not met" },
        mps(fm_decode),
        if simple_decode >= 5e6 {
            "met"
        } else {
            "not met"
        },
        mps(simple_decode),
    );
}
