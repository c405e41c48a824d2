//! The punt bell: a TAP device whose only traffic is the datapath's
//! wake-up calls for the punt ring.
//!
//! A BPF ring buffer wakes its reader from an interrupt (irq_work, a
//! self-IPI), which on a virtual machine costs about 10 µs more than the
//! plain wake-up of a socket (`examples/punt_wakeup`: 25 -> 15 µs from the
//! BPF program to `epoll_wait` returning, on the 2-vCPU VM of issue 19).
//! So when a punt finds the agent caught up with the ring, the datapath
//! commits it without the ring's wake-up and sends a copy of the packet
//! out of this device instead
//! ([`daolinet_common::DatapathConfig::punt_bell`]): the TAP queues it for
//! this descriptor and wakes the event loop like any socket. The agent
//! reads the copies only to throw them away: the punt itself, with its
//! metadata, is in the ring.
//!
//! The device (`dlbellN`) is not persistent: the kernel removes it when
//! the descriptor closes, so it never outlives the agent. It has IPv6 off
//! and no ARP, and offloads on (checksum, TSO, USO) so that the kernel
//! neither segments nor checksums the copies it sends there.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::tap::{self, os_error, NewTap};

/// Name pattern of the bell device (the kernel picks the number).
pub const BELL_NAME: &str = "dlbell%d";

/// Reads per [`PuntBell::clear`] at most (a bell rings at most once per
/// catch-up of the reader, so a handful wait at a time).
const MAX_READS: usize = 1024;

/// The bell device, held open (see the module documentation).
#[derive(Debug)]
pub struct PuntBell {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
}

impl PuntBell {
    /// Create the TAP device and bring it up (needs CAP_NET_ADMIN and
    /// `/dev/net/tun`).
    pub fn new() -> io::Result<Self> {
        let NewTap { fd, name, mut req } = tap::open(BELL_NAME)?;
        // Large copies pass as they are (USO needs Linux 6.2; without it
        // UDP super-frames are segmented, which only costs time).
        let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        for offloads in [tso | libc::TUN_F_USO4 | libc::TUN_F_USO6, tso] {
            // SAFETY: valid fd; the argument is passed by value.
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, offloads) } == 0 {
                break;
            }
        }
        // Best effort: a kernel without IPv6 has no such file.
        let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if let Err(e) = std::fs::write(&path, "1") {
            tracing::debug!(path, "not set: {e}");
        }
        tap::up_without_arp(&tap::ioctl_socket()?, &name, &mut req)?;
        let c = std::ffi::CString::new(name.clone()).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(os_error(&name));
        }
        Ok(PuntBell { fd, name, ifindex })
    }

    /// The device's name (`dlbellN`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's interface index (for the datapath's configuration).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The descriptor to wait on: readable when the bell rang.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Throw the copies waiting away. Call it *before* looking at the
    /// ring: a copy read afterwards could be the only wake-up of a record
    /// committed in between.
    pub fn clear(&self) {
        let mut buf = [0u8; 64];
        for _ in 0..MAX_READS {
            // SAFETY: valid fd and buffer; a TAP read takes one frame and
            // drops what does not fit.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (a network namespace of its own): a frame sent
    /// out of the bell wakes its descriptor, and clearing empties it.
    #[test]
    fn a_frame_sent_to_the_bell_is_read_and_cleared() {
        use daolinet_testlab::{require, Need};
        let Some(_ready) = require(&[Need::Root]) else {
            return;
        };
        // A thread of its own in a network namespace of its own.
        let r = std::thread::spawn(|| -> io::Result<()> {
            // SAFETY: the network namespace is per thread: this one only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(os_error("unshare"));
            }
            let bell = PuntBell::new()?;
            assert!(bell.name().starts_with("dlbell"));
            let inj = crate::inject::Injector::new()?;
            let mut frame = [0u8; 60];
            frame[..6].copy_from_slice(&[0xff; 6]);
            frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
            inj.send(bell.ifindex(), &frame)?;
            let mut p = libc::pollfd {
                fd: bell.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, 5000) };
            assert_eq!(n, 1, "the bell did not ring");
            bell.clear();
            // SAFETY: as above.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            assert_eq!(n, 0, "not cleared");
            Ok(())
        })
        .join();
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}
