//! Kernel timestamps of a first packet's way through a switch, taken the
//! same way whatever the switch is (the agent or Open vSwitch): an
//! AF_PACKET socket in the switch's host namespace sees
//!
//! - the probe frame arriving on the source container's port (`pa`),
//! - the PACKET_IN segment the switch sends to the controller and the
//!   PACKET_OUT segment the controller sends back, on loopback,
//! - the frame leaving on the destination container's port (`pb`),
//!
//! each stamped by the kernel (`SO_TIMESTAMPNS`: when the frame was queued
//! for reception, or handed to the device for transmission). The switch's
//! own share of a first packet is then (PACKET_IN − arrival) + (departure −
//! PACKET_OUT): what the controller and the containers do is not in it.
//!
//! Nobody waits on the socket (it is drained between probes), so it costs
//! the switches no wake-up; a classic BPF filter keeps only the probes'
//! UDP frames and the OpenFlow connection's segments.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Result;

/// UDP ports of the probes (source, destination).
pub const PROBE_PORTS: (u16, u16) = (40000, 40001);

/// Where a probe was seen.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sightings {
    /// Arrived on the source port (ns, CLOCK_REALTIME).
    pub arrived: Option<u64>,
    /// The PACKET_IN carrying it left the switch.
    pub packet_in: Option<u64>,
    /// The PACKET_OUT carrying it left the controller.
    pub packet_out: Option<u64>,
    /// Left on the destination port.
    pub departed: Option<u64>,
}

impl Sightings {
    /// The switch's two shares (µs): arrival to PACKET_IN, PACKET_OUT to
    /// departure; None unless all four were seen in order.
    pub fn shares(&self) -> Option<(f64, f64)> {
        let (a, i, o, d) = (
            self.arrived?,
            self.packet_in?,
            self.packet_out?,
            self.departed?,
        );
        (a <= i && i <= o && o <= d).then(|| ((i - a) as f64 / 1000.0, (d - o) as f64 / 1000.0))
    }
}

/// The capture socket of one switch's host namespace.
pub struct Capture {
    fd: OwnedFd,
    src_port: u32,
    dst_port: u32,
    lo: u32,
    ctl_port: u16,
    buf: Vec<u8>,
}

/// The filter: IPv4 UDP to the probes' destination port, or IPv4 TCP from
/// or to the controller's port.
fn filter(ctl_port: u16) -> Vec<libc::sock_filter> {
    let i = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let (ld_h_abs, ld_b_abs, jeq, ldx_msh, ld_h_ind, ret) = (0x28, 0x30, 0x15, 0xb1, 0x48, 0x06);
    let ctl = u32::from(ctl_port);
    vec![
        i(ld_h_abs, 0, 0, 12),                  // 0: ethertype
        i(jeq, 0, 12, 0x0800),                  // 1: IPv4, else drop (14)
        i(ld_b_abs, 0, 0, 23),                  // 2: protocol
        i(jeq, 1, 0, 17),                       // 3: UDP -> 5
        i(jeq, 3, 9, 6),                        // 4: TCP -> 8, else drop
        i(ldx_msh, 0, 0, 14),                   // 5: X = IP header length
        i(ld_h_ind, 0, 0, 16),                  // 6: UDP destination port
        i(jeq, 5, 6, u32::from(PROBE_PORTS.1)), // 7: -> accept / drop
        i(ldx_msh, 0, 0, 14),                   // 8
        i(ld_h_ind, 0, 0, 14),                  // 9: TCP source port
        i(jeq, 2, 0, ctl),                      // 10: -> accept
        i(ld_h_ind, 0, 0, 16),                  // 11: TCP destination port
        i(jeq, 0, 1, ctl),                      // 12: -> accept / drop
        i(ret, 0, 0, 0xffff),                   // 13: accept
        i(ret, 0, 0, 0),                        // 14: drop
    ]
}

fn os_err<T>(what: &str) -> Result<T> {
    Err(anyhow::anyhow!(
        "{what}: {}",
        std::io::Error::last_os_error()
    ))
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return os_err(&format!("no interface {name}"));
    }
    Ok(i)
}

impl Capture {
    /// Open the capture in the current thread's namespace, for a switch
    /// whose container ports are `src` and `dst` and whose controller
    /// listens on TCP port `ctl_port` on loopback.
    pub fn open(src: &str, dst: &str, ctl_port: u16) -> Result<Capture> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return os_err("AF_PACKET socket");
        }
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let prog = filter(ctl_port);
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr().cast_mut(),
        };
        let on: libc::c_int = 1;
        let rcvbuf: libc::c_int = 16 << 20;
        for (opt, val, len) in [
            (
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast::<libc::c_void>(),
                size_of::<libc::sock_fprog>(),
            ),
            (
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>(),
            ),
            (
                libc::SO_RCVBUFFORCE,
                (&rcvbuf as *const libc::c_int).cast(),
                size_of::<libc::c_int>(),
            ),
        ] {
            // SAFETY: valid socket and option values of the given sizes.
            let rc =
                unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, val, len as u32) };
            if rc != 0 {
                return os_err(&format!("setsockopt {opt}"));
            }
        }
        Ok(Capture {
            fd,
            src_port: ifindex(src)?,
            dst_port: ifindex(dst)?,
            lo: ifindex("lo")?,
            ctl_port,
            buf: vec![0; 65536],
        })
    }

    /// Read everything captured so far into `seen` (by probe id).
    pub fn drain(&mut self, seen: &mut HashMap<u32, Sightings>) {
        loop {
            // SAFETY: sockaddr_ll is plain old data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut iov = libc::iovec {
                iov_base: self.buf.as_mut_ptr().cast(),
                iov_len: self.buf.len(),
            };
            let mut ctrl = [0u64; 16];
            // SAFETY: msghdr is plain old data.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctrl.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&ctrl);
            // SAFETY: valid socket and message buffers.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
            if n <= 0 {
                return;
            }
            let Some(ts) = timestamp(&msg) else { continue };
            let frame = &self.buf[..n as usize];
            let out = sll.sll_pkttype == libc::PACKET_OUTGOING;
            let ifi = sll.sll_ifindex as u32;
            if ifi == self.src_port && !out {
                if let Some(id) = probe_id(frame) {
                    seen.entry(id).or_default().arrived.get_or_insert(ts);
                }
            } else if ifi == self.dst_port && out {
                if let Some(id) = probe_id(frame) {
                    seen.entry(id).or_default().departed.get_or_insert(ts);
                }
            } else if ifi == self.lo && out {
                for (ty, id) in openflow_probes(frame, self.ctl_port) {
                    let s = seen.entry(id).or_default();
                    match ty {
                        10 => s.packet_in.get_or_insert(ts),
                        13 => s.packet_out.get_or_insert(ts),
                        _ => continue,
                    };
                }
            }
        }
    }
}

/// The SCM_TIMESTAMPNS of a received message, in ns.
fn timestamp(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: walking the control messages the kernel wrote into a
    // buffer we own, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// The IPv4 payload of an Ethernet frame and its protocol.
fn ipv4(frame: &[u8]) -> Option<(u8, &[u8])> {
    if frame.get(12..14)? != [8, 0] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    Some((*ip.get(9)?, ip.get(ihl..total.min(ip.len()))?))
}

/// The id of a probe frame (UDP to the probes' port, 4-byte id payload).
fn probe_id(frame: &[u8]) -> Option<u32> {
    let (proto, udp) = ipv4(frame)?;
    if proto != 17 || udp.get(2..4)? != PROBE_PORTS.1.to_be_bytes() {
        return None;
    }
    let p = udp.get(8..12)?;
    Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
}

/// The OpenFlow messages in a loopback TCP segment of the controller's
/// connection that carry a probe frame: (message type, probe id).
fn openflow_probes(frame: &[u8], ctl_port: u16) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    let Some((6, tcp)) = ipv4(frame) else {
        return out;
    };
    let ports = [tcp.get(0..2), tcp.get(2..4)];
    let ctl = Some(&ctl_port.to_be_bytes()[..]);
    if ports[0] != ctl && ports[1] != ctl {
        return out;
    }
    let Some(off) = tcp.get(12).map(|b| usize::from(b >> 4) * 4) else {
        return out;
    };
    let mut data = tcp.get(off..).unwrap_or_default();
    // Whole OpenFlow messages at the start of the segment (ours are small
    // and written one per segment).
    while data.len() >= 8 {
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        if data[0] != 4 || len < 8 {
            break;
        }
        let msg = &data[..len.min(data.len())];
        let (sp, dp) = (PROBE_PORTS.0.to_be_bytes(), PROBE_PORTS.1.to_be_bytes());
        let pat = [sp[0], sp[1], dp[0], dp[1], 0, 12];
        if let Some(at) = msg.windows(pat.len()).position(|w| w == pat) {
            if let Some(id) = msg.get(at + 8..at + 12) {
                out.push((data[1], u32::from_be_bytes([id[0], id[1], id[2], id[3]])));
            }
        }
        data = data.get(len..).unwrap_or_default();
    }
    out
}
