//! How long a punt takes to wake a thread blocked in `epoll_wait`, by
//! transport, on this machine (issue 19: the agent's trace put 45 µs
//! between the BPF program's `bpf_ktime_get_ns` and the agent reading the
//! punt, against 4 µs for a plain thread wake-up). The agent's punt bell
//! ([`daolinet_agent::bell`]) came out of it.
//!
//! A private network namespace (the process unshares one, so nothing is
//! left behind) with veth pairs named `punt-*`. A sender thread on CPU 0
//! writes a small raw frame into one end every few milliseconds (idle in
//! between, like the first packets of `cargo xtask bench agent`); a tcx
//! ingress program on the other end (hand-assembled, no object file)
//! stamps it with `bpf_ktime_get_ns` and hands it over; one waiter thread
//! per variant sleeps in `epoll_wait` (edge-triggered, as mio registers)
//! and notes when it returns. The variants take turns, so they share the
//! machine's load:
//!
//! - `ring`: `bpf_ringbuf_output` of the stamp (the agent's punt ring),
//!   flags 0 (the kernel wakes the reader, from irq_work, when it had
//!   caught up);
//! - `ring-force`: the same with `BPF_RB_FORCE_WAKEUP`;
//! - `doorbell`: the record with `BPF_RB_NO_WAKEUP`, then
//!   `bpf_clone_redirect` of the frame to a veth (peer up) that the
//!   waiter watches with an `AF_PACKET` socket;
//! - `tap-bell`: the same with a TAP device the waiter reads (what the
//!   agent does);
//! - `packet`: no ring: the stamp written into the frame, the frame
//!   cloned to a veth read with an `AF_PACKET` socket;
//! - `unix`, `eventfd`: no BPF: the sender writes to a Unix datagram
//!   socket or an eventfd (a plain thread wake-up at the same pacing);
//!
//! each with the waiter pinned to the sender's CPU (`same`), left to the
//! scheduler (`any`), or moved to the other CPU after each wake-up and
//! then unpinned (`from-other`: the agent's last work ran there). `busy`
//! in the arguments adds a thread spinning on CPU 1.
//!
//! `sudo cargo run --release -p daolinet-agent --example punt_wakeup
//! [ROUNDS] [GAP_US] [busy]` (default 300 rounds, 3000 µs apart) prints
//! one line per variant: medians and 90th percentiles, in microseconds, of
//! the time from the BPF stamp to the return of `epoll_wait` and from the
//! sender's send call to it, and how often the waiter woke on CPU 0.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// CLOCK_MONOTONIC in nanoseconds (the clock of `bpf_ktime_get_ns`).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn errno<T>(what: &str) -> Result<T> {
    Err(std::io::Error::last_os_error()).context(what.to_string())
}

fn own(fd: RawFd, what: &str) -> Result<OwnedFd> {
    if fd < 0 {
        return errno(what);
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn ip(args: &str) -> Result<()> {
    let st = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .context("ip")?;
    if !st.success() {
        bail!("ip {args}: {st}");
    }
    Ok(())
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return errno(name);
    }
    Ok(i)
}

// ---- BPF, by system call ----

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const STX_DW: u8 = 0x7b;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_DW: u8 = 0x18;
const KTIME_GET_NS: i32 = 5;
const SKB_STORE_BYTES: i32 = 9;
const CLONE_REDIRECT: i32 = 13;
const RINGBUF_OUTPUT: i32 = 130;
const TC_ACT_SHOT: i32 = 2;
const RB_NO_WAKEUP: i32 = 1;
const RB_FORCE_WAKEUP: i32 = 2;
/// Where the stamp goes in the frame (after the Ethernet header).
const STAMP_AT: usize = 14;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> libc::c_long {
    // SAFETY: `attr` is a zero-padded bpf_attr large enough for the
    // commands used here.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) }
}

fn put32(attr: &mut [u64; 16], at: usize, v: u32) {
    let b = bytemuck::cast_slice_mut::<u64, u8>(attr);
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(attr: &mut [u64; 16], at: usize, v: u64) {
    let b = bytemuck::cast_slice_mut::<u64, u8>(attr);
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

const RING_BYTES: usize = 1 << 16;

fn ringbuf() -> Result<OwnedFd> {
    let mut a = [0u64; 16];
    put32(&mut a, 0, 27); // BPF_MAP_TYPE_RINGBUF
    put32(&mut a, 12, RING_BYTES as u32);
    own(bpf(0, &mut a) as RawFd, "BPF_MAP_CREATE ringbuf")
}

/// Load `prog` as a classifier and attach it to `ifindex`'s tcx ingress.
fn attach(prog: &[Insn], ifindex: u32) -> Result<(OwnedFd, OwnedFd)> {
    let license = c"GPL";
    let mut log = vec![0u8; 65536];
    let mut a = [0u64; 16];
    put32(&mut a, 0, 3); // BPF_PROG_TYPE_SCHED_CLS
    put32(&mut a, 4, prog.len() as u32);
    put64(&mut a, 8, prog.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    put32(&mut a, 24, 1);
    put32(&mut a, 28, log.len() as u32);
    put64(&mut a, 32, log.as_mut_ptr() as u64);
    let fd = bpf(5, &mut a);
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        bail!(
            "BPF_PROG_LOAD: {e}\n{}",
            String::from_utf8_lossy(&log[..end])
        );
    }
    let prog_fd = own(fd as RawFd, "prog")?;
    let mut a = [0u64; 16];
    put32(&mut a, 0, prog_fd.as_raw_fd() as u32);
    put32(&mut a, 4, ifindex);
    put32(&mut a, 8, 46); // BPF_TCX_INGRESS
    let link = own(bpf(28, &mut a) as RawFd, "BPF_LINK_CREATE tcx")?;
    Ok((prog_fd, link))
}

/// r6 = ctx; stamp at r10-8.
fn stamp_prologue() -> Vec<Insn> {
    vec![
        insn(MOV64_X, 6, 1, 0, 0),
        insn(CALL, 0, 0, 0, KTIME_GET_NS),
        insn(STX_DW, 10, 0, -8, 0),
    ]
}

fn drop_epilogue(p: &mut Vec<Insn>) {
    p.push(insn(MOV64_K, 0, 0, 0, TC_ACT_SHOT));
    p.push(insn(EXIT, 0, 0, 0, 0));
}

fn ring_prog(map: RawFd, flags: i32) -> Vec<Insn> {
    let mut p = stamp_prologue();
    p.push(insn(LD_DW, 1, 1, 0, map));
    p.push(insn(0, 0, 0, 0, 0));
    p.push(insn(MOV64_X, 2, 10, 0, 0));
    p.push(insn(ADD64_K, 2, 0, 0, -8));
    p.push(insn(MOV64_K, 3, 0, 0, 8));
    p.push(insn(MOV64_K, 4, 0, 0, flags));
    p.push(insn(CALL, 0, 0, 0, RINGBUF_OUTPUT));
    drop_epilogue(&mut p);
    p
}

/// The ring without its wake-up, and a clone of the frame to `bell`'s
/// egress to wake the reader instead.
fn doorbell_prog(map: RawFd, bell: u32) -> Vec<Insn> {
    let mut p = ring_prog(map, RB_NO_WAKEUP);
    p.truncate(p.len() - 2);
    p.push(insn(MOV64_X, 1, 6, 0, 0));
    p.push(insn(MOV64_K, 2, 0, 0, bell as i32));
    p.push(insn(MOV64_K, 3, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, CLONE_REDIRECT));
    drop_epilogue(&mut p);
    p
}

fn packet_prog(to: u32) -> Vec<Insn> {
    let mut p = stamp_prologue();
    p.push(insn(MOV64_X, 1, 6, 0, 0));
    p.push(insn(MOV64_K, 2, 0, 0, STAMP_AT as i32));
    p.push(insn(MOV64_X, 3, 10, 0, 0));
    p.push(insn(ADD64_K, 3, 0, 0, -8));
    p.push(insn(MOV64_K, 4, 0, 0, 8));
    p.push(insn(MOV64_K, 5, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, SKB_STORE_BYTES));
    p.push(insn(MOV64_X, 1, 6, 0, 0));
    p.push(insn(MOV64_K, 2, 0, 0, to as i32));
    p.push(insn(MOV64_K, 3, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, CLONE_REDIRECT));
    drop_epilogue(&mut p);
    p
}

/// The consumer side of a BPF ring buffer, mapped.
struct Ring {
    cons: *mut u64,
    prod: *const u64,
    data: *const u8,
    mask: u64,
}

// SAFETY: the mappings live as long as the process and are only used by
// the one waiter thread that owns the Ring.
unsafe impl Send for Ring {}

impl Ring {
    fn map(fd: RawFd) -> Result<Ring> {
        let page = 4096usize;
        // SAFETY: mmap of the ring's consumer page (read-write) and of its
        // producer page and data (read-only, data mapped twice), as the
        // kernel lays them out; never unmapped.
        unsafe {
            let c = libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            let p = libc::mmap(
                std::ptr::null_mut(),
                page + 2 * RING_BYTES,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                page as libc::off_t,
            );
            if c == libc::MAP_FAILED || p == libc::MAP_FAILED {
                return errno("mmap ring");
            }
            Ok(Ring {
                cons: c.cast(),
                prod: p.cast(),
                data: p.cast::<u8>().add(page),
                mask: RING_BYTES as u64 - 1,
            })
        }
    }

    /// The stamps of the records waiting.
    fn drain(&mut self, out: &mut Vec<u64>) {
        // SAFETY: positions and records as the kernel's ring ABI defines
        // them; acquire/release pairs with the producer.
        unsafe {
            let cons = &*(self.cons as *const std::sync::atomic::AtomicU64);
            let prod = &*(self.prod as *const std::sync::atomic::AtomicU64);
            let mut c = cons.load(Ordering::Acquire);
            while c < prod.load(Ordering::Acquire) {
                let hdr = self.data.add((c & self.mask) as usize);
                let len = (*(hdr as *const std::sync::atomic::AtomicU32)).load(Ordering::Acquire);
                if len & (1 << 31) != 0 {
                    break; // still being written
                }
                let n = len & !(3 << 30);
                if len & (1 << 30) == 0 && n >= 8 {
                    out.push(std::ptr::read_unaligned(hdr.add(8) as *const u64));
                }
                c += (u64::from(n) + 8 + 7) & !7;
                cons.store(c, Ordering::Release);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ring,
    RingForce,
    Doorbell,
    TapBell,
    Packet,
    Unix,
    Eventfd,
}

#[derive(Clone, Copy, PartialEq)]
enum Cpu {
    /// Pinned to the sender's CPU.
    Same,
    /// Unpinned, but moved to the other CPU after each wake-up, as when
    /// the agent's last work ran there.
    FromOther,
    /// Left to the scheduler.
    Any,
}

fn unpin() {
    // SAFETY: as in `pin`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::CPU_SET(1, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

struct Variant {
    name: String,
    kind: Kind,
    /// Where the sender writes: raw socket on the veth, or the Unix
    /// socket / eventfd.
    send_fd: OwnedFd,
    send_ifindex: u32,
    /// (epoll return - BPF stamp, epoll return - send, woke on CPU 0).
    waiter: Option<JoinHandle<Vec<(u64, u64, bool)>>>,
    /// When the last probe was sent (the waiter subtracts it).
    sent: Arc<std::sync::atomic::AtomicU64>,
    _keep: Vec<OwnedFd>,
}

/// A raw socket bound to `ifindex`, receiving every protocol (`listen`)
/// or nothing.
fn raw_socket(ifindex: u32, listen: bool) -> Result<OwnedFd> {
    let proto = if listen {
        (libc::ETH_P_ALL as u16).to_be()
    } else {
        0
    };
    // SAFETY: plain system calls on a fresh socket.
    unsafe {
        let fd = own(
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            ),
            "AF_PACKET socket",
        )?;
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return errno("bind AF_PACKET");
        }
        Ok(fd)
    }
}

/// A TAP device named `name` (no packet information header), its file
/// non-blocking.
fn tap(name: &str) -> Result<OwnedFd> {
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = own(
        unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        },
        "/dev/net/tun",
    )?;
    // SAFETY: a zeroed ifreq with its name and flags set, for TUNSETIFF.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
        if libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &ifr) != 0 {
            return errno("TUNSETIFF");
        }
    }
    Ok(fd)
}

fn frame() -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

/// Block in epoll_wait on `fd` (plus `stop`), note each return.
fn waiter(
    kind: Kind,
    fd: RawFd,
    mut ring: Option<Ring>,
    cpu: Cpu,
    stop: Arc<AtomicBool>,
    stop_fd: RawFd,
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<(u64, u64, bool)> {
    if cpu == Cpu::Same {
        pin(0);
    }
    let mut out = Vec::new();
    // SAFETY: epoll on descriptors this process owns for its whole life.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for (f, tok) in [(fd, 1u64), (stop_fd, 2u64)] {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: tok,
        };
        // SAFETY: as above.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, f, &mut ev) };
    }
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
    let mut stamps = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Acquire) {
        // SAFETY: as above.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, -1) };
        let woke = now_ns();
        // SAFETY: plain call.
        let on0 = unsafe { libc::sched_getcpu() } == 0;
        if n <= 0 {
            continue;
        }
        let sent_at = sent.load(Ordering::Acquire);
        stamps.clear();
        match kind {
            Kind::Ring | Kind::RingForce | Kind::Doorbell | Kind::TapBell => {
                if kind == Kind::Doorbell || kind == Kind::TapBell {
                    // SAFETY: reading into a buffer of that size.
                    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } >= 0 {}
                }
                if let Some(r) = ring.as_mut() {
                    r.drain(&mut stamps);
                }
            }
            Kind::Packet | Kind::Unix => loop {
                // SAFETY: reading into a buffer of that size.
                let r = unsafe {
                    libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if r < 0 {
                    break;
                }
                let at = if kind == Kind::Packet { STAMP_AT } else { 0 };
                let ours = kind == Kind::Unix || buf[12..14] == [0x88, 0xb5];
                if ours && r as usize >= at + 8 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[at..at + 8]);
                    stamps.push(u64::from_ne_bytes(b));
                }
            },
            Kind::Eventfd => {
                let mut v = 0u64;
                // SAFETY: an eventfd read of 8 bytes.
                unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
                stamps.push(sent_at);
            }
        }
        for &s in &stamps {
            out.push((woke.saturating_sub(s), woke.saturating_sub(sent_at), on0));
        }
        if cpu == Cpu::FromOther {
            pin(1);
            unpin();
        }
    }
    out
}

fn spinner(stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        pin(1);
        while !stop.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    })
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i] as f64 / 1000.0
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().map_or(Ok(300), |s| s.parse())?;
    let gap_us: u64 = args.get(1).map_or(Ok(3000), |s| s.parse())?;
    let busy = args.iter().any(|a| a == "busy");

    // SAFETY: before any thread: the process moves to a network namespace
    // of its own, which goes away with it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return errno("unshare(CLONE_NEWNET) (root?)");
    }
    ip("link set lo up")?;
    // No IPv6 chatter on the veths: every frame there is a probe.
    for k in ["all", "default"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1")
            .context("disable_ipv6")?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    // SAFETY: plain system call.
    let stop_fd = own(
        unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) },
        "eventfd",
    )?;

    let kinds = [
        ("ring", Kind::Ring),
        ("ring-force", Kind::RingForce),
        ("doorbell", Kind::Doorbell),
        ("tap-bell", Kind::TapBell),
        ("packet", Kind::Packet),
        ("unix", Kind::Unix),
        ("eventfd", Kind::Eventfd),
    ];
    let cpus = [
        ("any", Cpu::Any),
        ("same", Cpu::Same),
        ("from-other", Cpu::FromOther),
    ];
    let mut variants = Vec::new();
    for (ki, (kname, kind)) in kinds.iter().enumerate() {
        for (ci, (cname, cpu)) in cpus.iter().enumerate() {
            let i = ki * cpus.len() + ci;
            let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut keep = Vec::new();
            let (send_fd, send_ifindex, wait_fd, ring) = match kind {
                Kind::Ring | Kind::RingForce | Kind::Doorbell | Kind::TapBell | Kind::Packet => {
                    let (a, b) = (format!("punt-a{i}"), format!("punt-b{i}"));
                    ip(&format!("link add {a} type veth peer name {b}"))?;
                    ip(&format!("link set {a} up"))?;
                    ip(&format!("link set {b} up"))?;
                    let (ai, bi) = (ifindex(&a)?, ifindex(&b)?);
                    let send = raw_socket(ai, false)?;
                    if *kind == Kind::Packet {
                        let (c, d) = (format!("punt-c{i}"), format!("punt-d{i}"));
                        ip(&format!("link add {c} type veth peer name {d}"))?;
                        ip(&format!("link set {c} up"))?;
                        ip(&format!("link set {d} up"))?;
                        let ci = ifindex(&c)?;
                        let (p, l) = attach(&packet_prog(ci), bi)?;
                        keep.extend([p, l]);
                        let r = raw_socket(ci, true)?;
                        let fd = r.as_raw_fd();
                        keep.push(r);
                        (send, ai, fd, None)
                    } else if *kind == Kind::TapBell {
                        // The bell: a TAP device this process reads.
                        let t = format!("punt-t{i}");
                        let tap = tap(&t)?;
                        ip(&format!("link set {t} up"))?;
                        let ti = ifindex(&t)?;
                        let map = ringbuf()?;
                        let (p, l) = attach(&doorbell_prog(map.as_raw_fd(), ti), bi)?;
                        keep.extend([p, l]);
                        let ring = Ring::map(map.as_raw_fd())?;
                        keep.push(map);
                        let fd = tap.as_raw_fd();
                        keep.push(tap);
                        (send, ai, fd, Some(ring))
                    } else if *kind == Kind::Doorbell {
                        // The bell: a veth end whose peer stays down, so
                        // what is sent there is seen by packet sockets and
                        // dropped.
                        let (e, f) = (format!("punt-e{i}"), format!("punt-f{i}"));
                        ip(&format!("link add {e} type veth peer name {f}"))?;
                        ip(&format!("link set {e} up"))?;
                        ip(&format!("link set {f} up"))?;
                        let ei = ifindex(&e)?;
                        let map = ringbuf()?;
                        let (p, l) = attach(&doorbell_prog(map.as_raw_fd(), ei), bi)?;
                        keep.extend([p, l]);
                        let ring = Ring::map(map.as_raw_fd())?;
                        keep.push(map);
                        let r = raw_socket(ei, true)?;
                        let fd = r.as_raw_fd();
                        keep.push(r);
                        (send, ai, fd, Some(ring))
                    } else {
                        let map = ringbuf()?;
                        let flags = if *kind == Kind::RingForce {
                            RB_FORCE_WAKEUP
                        } else {
                            0
                        };
                        let (p, l) = attach(&ring_prog(map.as_raw_fd(), flags), bi)?;
                        keep.extend([p, l]);
                        let ring = Ring::map(map.as_raw_fd())?;
                        let fd = map.as_raw_fd();
                        keep.push(map);
                        (send, ai, fd, Some(ring))
                    }
                }
                Kind::Unix => {
                    let mut sv = [0; 2];
                    // SAFETY: socketpair fills two descriptors.
                    if unsafe {
                        libc::socketpair(
                            libc::AF_UNIX,
                            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                            0,
                            sv.as_mut_ptr(),
                        )
                    } != 0
                    {
                        return errno("socketpair");
                    }
                    let (s, r) = (own(sv[0], "unix")?, own(sv[1], "unix")?);
                    let fd = r.as_raw_fd();
                    keep.push(r);
                    (s, 0, fd, None)
                }
                Kind::Eventfd => {
                    // SAFETY: plain system call.
                    let e = own(
                        unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) },
                        "eventfd",
                    )?;
                    // SAFETY: duplicating a descriptor we own.
                    let s = own(unsafe { libc::dup(e.as_raw_fd()) }, "dup")?;
                    let fd = e.as_raw_fd();
                    keep.push(e);
                    (s, 0, fd, None)
                }
            };
            let cpu = *cpu;
            let (st, sfd, se) = (stop.clone(), stop_fd.as_raw_fd(), sent.clone());
            let kind = *kind;
            let w = std::thread::spawn(move || waiter(kind, wait_fd, ring, cpu, st, sfd, se));
            variants.push(Variant {
                name: format!("{kname}/{cname}"),
                kind,
                send_fd,
                send_ifindex,
                waiter: Some(w),
                sent,
                _keep: keep,
            });
        }
    }

    let spin_stop = Arc::new(AtomicBool::new(false));
    let spin = busy.then(|| spinner(spin_stop.clone()));
    pin(0);
    std::thread::sleep(Duration::from_millis(100));
    let f = frame();
    for _round in 0..rounds {
        for v in &variants {
            let t = now_ns();
            v.sent.store(t, Ordering::Release);
            // SAFETY: writes of buffers of the sizes given.
            let r = unsafe {
                match v.kind {
                    Kind::Unix => {
                        libc::send(v.send_fd.as_raw_fd(), (&t as *const u64).cast(), 8, 0)
                    }
                    Kind::Eventfd => {
                        let one = 1u64;
                        libc::write(v.send_fd.as_raw_fd(), (&one as *const u64).cast(), 8)
                    }
                    _ => {
                        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                        sll.sll_family = libc::AF_PACKET as u16;
                        sll.sll_ifindex = v.send_ifindex as i32;
                        sll.sll_halen = 6;
                        libc::sendto(
                            v.send_fd.as_raw_fd(),
                            f.as_ptr().cast(),
                            f.len(),
                            0,
                            (&sll as *const libc::sockaddr_ll).cast(),
                            size_of::<libc::sockaddr_ll>() as u32,
                        )
                    }
                }
            };
            if r < 0 {
                return errno(&format!("send {}", v.name));
            }
            std::thread::sleep(Duration::from_micros(gap_us));
        }
    }
    stop.store(true, Ordering::Release);
    spin_stop.store(true, Ordering::Relaxed);
    let one = 1u64;
    // SAFETY: an eventfd write of 8 bytes.
    unsafe { libc::write(stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if let Some(s) = spin {
        let _ = s.join();
    }
    let mut load = String::new();
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        load = l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    }
    println!("# {rounds} rounds, {gap_us} µs apart, busy CPU 1: {busy}, load average {load}; µs");
    println!(
        "{:<22} {:>5} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "variant", "n", "stamp p50", "stamp p90", "send p50", "send p90", "on cpu0"
    );
    for v in &mut variants {
        let Some(w) = v.waiter.take() else { continue };
        let s = match w.join() {
            Ok(s) => s,
            Err(_) => bail!("waiter {} panicked", v.name),
        };
        let mut a: Vec<u64> = s.iter().map(|x| x.0).collect();
        let mut b: Vec<u64> = s.iter().map(|x| x.1).collect();
        let stamped = !matches!(v.kind, Kind::Eventfd);
        println!(
            "{:<22} {:>5} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>6.0}%",
            v.name,
            s.len(),
            if stamped { pct(&mut a, 0.5) } else { f64::NAN },
            if stamped { pct(&mut a, 0.9) } else { f64::NAN },
            pct(&mut b, 0.5),
            pct(&mut b, 0.9),
            s.iter().filter(|x| x.2).count() as f64 * 100.0 / s.len().max(1) as f64,
        );
    }
    Ok(())
}
