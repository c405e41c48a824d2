//! The kernel's share of installing and deleting flows: what one
//! `BPF_F_NO_PREALLOC` hash map element costs by the size of its value.
//!
//! `cargo run --release -p daolinet-common --example flow_map_cost [N [VALUE_BYTES...]]`
//! (root) makes, for each value size (default: the classifier's
//! `FlowEntry`, and 184, its size before actions were 12 bytes), a hash map
//! like `DL_FLOWS` (the 44-byte `FlowMapKey`, room for N entries), writes N
//! entries with `BPF_MAP_UPDATE_BATCH` and deletes them with
//! `BPF_MAP_DELETE_BATCH` in batches of 680 (as the agent does, one per
//! 64 KiB of FLOW_MODs), and prints one JSON line per size: this thread's
//! CPU time per entry for each (`/proc/thread-self/schedstat`, steadier
//! than the wall clock on a shared machine) and how many more objects the
//! kernel's `kmalloc-cg-*` slab caches held with the N entries in. The
//! sizes are measured in turn, three rounds.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use daolinet_common::{FlowEntry, FlowMapKey};

/// Keys and values of one batch call.
const BATCH: usize = 680;

/// `union bpf_attr` for BPF_MAP_CREATE (the fields used).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u32; 27],
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised bpf_attr member of the size
    // passed; the kernel reads (and for batches writes back) only it and
    // the buffers it points at, which the callers keep alive.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn create(value_size: u32, max_entries: u32) -> std::io::Result<OwnedFd> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_F_NO_PREALLOC: u32 = 1;
    let mut attr = CreateAttr {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: size_of::<FlowMapKey>() as u32,
        value_size,
        max_entries,
        map_flags: BPF_F_NO_PREALLOC,
        ..Default::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: a descriptor the kernel just made for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn batch(
    cmd: libc::c_long,
    fd: RawFd,
    keys: &[u8],
    values: &[u8],
    count: usize,
) -> Result<(), String> {
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: if values.is_empty() {
            0
        } else {
            values.as_ptr() as u64
        },
        count: count as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf(cmd, &mut attr)
        .map(|_| ())
        .map_err(|e| format!("batch command {cmd}: {e}"))
}

/// This thread's time on a CPU so far, in seconds.
fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Active objects of the `kmalloc-cg-*` caches, by object size.
fn slabs() -> Vec<(u64, i64)> {
    std::fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.strip_prefix("kmalloc-cg-")?;
            let size: u64 = match name.strip_suffix('k') {
                Some(k) => k.parse::<u64>().ok()? * 1024,
                None => name.parse().ok()?,
            };
            Some((size, f.next()?.parse().ok()?))
        })
        .collect()
}

fn one(n: usize, value_size: usize) -> Result<String, String> {
    let fd = create(value_size as u32, n as u32).map_err(|e| format!("BPF_MAP_CREATE: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let ks = size_of::<FlowMapKey>();
    // The bench's flows: one subtable, one IPv4 destination each.
    let keys: Vec<u8> = (0..n as u32)
        .flat_map(|i| {
            let mut k = FlowMapKey {
                subtable: 1,
                ..Default::default()
            };
            k.key.in_port = 1;
            k.key.eth_type = 0x0800;
            k.key.ipv4_dst = (0x0a00_0001 + i).to_be_bytes();
            bytemuck::bytes_of(&k).to_vec()
        })
        .collect();
    let values = vec![0u8; BATCH * value_size];
    let before = slabs();
    let c0 = cpu_s();
    for (i, chunk) in keys.chunks(BATCH * ks).enumerate() {
        let count = chunk.len() / ks;
        batch(26, fd, chunk, &values[..count * value_size], count)
            .map_err(|e| format!("update at {}: {e}", i * BATCH))?;
    }
    let install = cpu_s() - c0;
    let held: Vec<String> = slabs()
        .iter()
        .filter_map(|(size, now)| {
            let was = before.iter().find(|(s, _)| s == size).map_or(0, |b| b.1);
            (now - was > n as i64 / 2).then(|| format!("\"kmalloc-cg-{size}\":{}", now - was))
        })
        .collect();
    let c0 = cpu_s();
    for chunk in keys.chunks(BATCH * ks) {
        batch(27, fd, chunk, &[], chunk.len() / ks)?;
    }
    let delete = cpu_s() - c0;
    Ok(format!(
        "{{\"entries\":{n},\"value_bytes\":{value_size},\"install_cpu_us\":{:.3},\"delete_cpu_us\":{:.3},\"slab_objects_added\":{{{}}}}}",
        install / n as f64 * 1e6,
        delete / n as f64 * 1e6,
        held.join(",")
    ))
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let n: usize = match args.next() {
        Some(a) => a.parse().map_err(|e| format!("entries {a:?}: {e}"))?,
        None => 1_000_000,
    };
    let sizes: Vec<usize> = args
        .map(|a| a.parse().map_err(|e| format!("value size {a:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![size_of::<FlowEntry>(), 184]
    } else {
        sizes
    };
    for _round in 0..3 {
        for &v in &sizes {
            println!("{}", one(n, v)?);
        }
    }
    Ok(())
}
