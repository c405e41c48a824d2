//! Transmit frames: on an interface with an AF_PACKET socket ([`Injector`]:
//! PACKET_OUT, ARP replies; sending on the host side of a container's veth
//! delivers the frame into the container, sending on the uplink puts it on
//! the wire), and into the host's own network stack ([`LocalPort`]: output
//! to OpenFlow's LOCAL port executed in userspace).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::tap::{self, os_error, NewTap};

/// Refuse a frame without a whole Ethernet header.
fn check_frame(frame: &[u8]) -> io::Result<()> {
    if frame.len() < 14 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame shorter than an Ethernet header",
        ));
    }
    Ok(())
}

/// A send-only AF_PACKET socket (protocol 0: it receives nothing).
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    /// Open the socket (needs CAP_NET_RAW).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Injector {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Send one Ethernet frame out of interface `ifindex`.
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        check_frame(frame)?;
        // SAFETY: sockaddr_ll is plain old data.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid fd, buffer and address of the right size.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Name pattern of the [`LocalPort`] TAP device (the kernel picks the number).
pub const LOCAL_PORT_NAME: &str = "dllocal%d";

/// The agent's way into the host network stack for frames that userspace
/// sends to OpenFlow's LOCAL port (a PACKET_OUT to LOCAL, e.g. the first
/// packet of a NAT-out connection, whose later packets the datapath hands
/// to the host stack with TC_ACT_OK / XDP_PASS).
///
/// A TAP device (`dllocalN`) that the agent holds open: a frame written to
/// it is received by the host stack as if it came in on that device, so it
/// is routed, forwarded, conntracked and masqueraded like the datapath's
/// later packets. The device is *not* persistent: the kernel removes it
/// when the descriptor closes, so it never outlives the agent (not even a
/// crash or SIGKILL).
///
/// Differences from the datapath's pass to the stack, so they do not
/// matter for routing and NAT: the receiving interface is `dllocalN`
/// rather than the packet's ingress port (iptables `-i` rules see that
/// name), so the device has reverse-path filtering off and the dummy
/// address [`LOCAL_PORT_ADDR`] (the kernel takes the larger of
/// `all.rp_filter` and the device's: loose mode, 2, accepts any source the
/// host routes somewhere but needs the interface to have an address;
/// strict mode, 1, drops these frames, which is logged at start) and IPv6
/// and ARP off (it never sends anything of its own); the
/// destination MAC is set to the device's own MAC so the stack takes the
/// frame as addressed to the host.
pub struct LocalPort {
    fd: OwnedFd,
    name: String,
    mac: [u8; 6],
}

impl LocalPort {
    /// Create the TAP device and bring it up (needs CAP_NET_ADMIN and
    /// `/dev/net/tun`).
    pub fn new() -> io::Result<Self> {
        let NewTap { fd, name, mut req } = tap::open(LOCAL_PORT_NAME)?;
        // Best effort: a kernel without IPv6 has no such file.
        for (path, value) in [
            (format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "0"),
            (format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1"),
        ] {
            if let Err(e) = std::fs::write(&path, value) {
                tracing::debug!(path, "not set: {e}");
            }
        }
        match std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter") {
            Ok(v) if v.trim() == "1" => tracing::warn!(
                device = %name,
                "net.ipv4.conf.all.rp_filter=1 (strict): frames sent to LOCAL from userspace \
                 (PACKET_OUT) may be dropped by the host's reverse-path filter"
            ),
            _ => {}
        }
        set_up(&name, &mut req)?;
        let (mac, _) = crate::netdev::iface_info(&name);
        let mac = mac.ok_or_else(|| io::Error::other(format!("{name}: no MAC address")))?;
        Ok(LocalPort { fd, name, mac })
    }

    /// The TAP device's name (`dllocalN`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hand one Ethernet frame to the host network stack (its destination
    /// MAC becomes the device's, so the stack takes it as its own).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        check_frame(frame)?;
        let mut f = frame.to_vec();
        f[..6].copy_from_slice(&self.mac);
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), f.as_ptr().cast(), f.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The [`LocalPort`]'s address: RFC 7600's IPv4 dummy address, as a /32.
/// Reverse-path filtering in loose mode (`rp_filter=2`, a common default)
/// refuses every packet received on an interface without an IPv4 address;
/// with one it accepts any source the host has a route to, as the
/// datapath's pass to the stack does.
pub const LOCAL_PORT_ADDR: [u8; 4] = [192, 0, 0, 8];

/// Give interface `name` the IPv4 address `addr`/32, then bring it up
/// without ARP (`req` holds its name).
fn set_up(name: &str, req: &mut libc::ifreq) -> io::Result<()> {
    let s = tap::ioctl_socket()?;
    for (what, cmd, ip) in [
        ("SIOCSIFADDR", libc::SIOCSIFADDR, LOCAL_PORT_ADDR),
        ("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, [255; 4]),
    ] {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in the ifreq's sockaddr (both 16 bytes),
        // plain old data.
        unsafe {
            std::ptr::write_unaligned(
                (&mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast::<libc::sockaddr_in>(),
                sin,
            )
        };
        // SAFETY: valid fd and ifreq.
        if unsafe { libc::ioctl(s.as_raw_fd(), cmd, &mut *req) } < 0 {
            return Err(os_error(format_args!("{name}: {what}")));
        }
    }
    tap::up_without_arp(&s, name, req)
}
