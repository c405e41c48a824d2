//! Transmit frames on an interface with an AF_PACKET socket (PACKET_OUT,
//! ARP replies). Sending on the host side of a container's veth delivers
//! the frame into the container; sending on the uplink puts it on the wire.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
        if frame.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame shorter than an Ethernet header",
            ));
        }
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
