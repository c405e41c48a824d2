//! TAP devices of the agent's own ([`crate::inject::LocalPort`],
//! [`crate::bell::PuntBell`]): opened non-persistent, so the kernel removes
//! them when their descriptor closes, and brought up without ARP.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The last OS error (errno), its message prefixed with what failed.
pub(crate) fn os_error(what: impl std::fmt::Display) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A TAP device just made: its descriptor (non-blocking, close-on-exec),
/// its name, and an `ifreq` holding that name for further ioctls.
pub(crate) struct NewTap {
    /// The device's queue: frames sent out of the device are read here.
    pub fd: OwnedFd,
    /// The name the kernel gave it.
    pub name: String,
    /// An `ifreq` with the name set.
    pub req: libc::ifreq,
}

/// Make a TAP device (no packet information header) named after
/// `pattern` (e.g. `dlbell%d`: the kernel picks the number). Needs
/// CAP_NET_ADMIN and `/dev/net/tun`.
pub(crate) fn open(pattern: &str) -> io::Result<NewTap> {
    // SAFETY: plain open(2) of a constant NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(os_error("/dev/net/tun"));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The last byte stays NUL.
    let room = req.ifr_name.len() - 1;
    for (d, s) in req.ifr_name.iter_mut().take(room).zip(pattern.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: valid fd and ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(os_error(format_args!("{pattern}: TUNSETIFF")));
    }
    let name: String = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    Ok(NewTap { fd, name, req })
}

/// A datagram socket for interface ioctls.
pub(crate) fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain datagram socket used only for ioctls.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: fresh descriptor we own (closed on drop).
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

/// Bring the device named in `req` up, without ARP, through the ioctl
/// socket `s` (`name` is for the error messages).
pub(crate) fn up_without_arp(s: &OwnedFd, name: &str, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: valid socket and ifreq (its name set).
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut *req) } < 0 {
        return Err(os_error(format_args!("{name}: SIOCGIFFLAGS")));
    }
    // SAFETY: the flags member, just filled by the kernel.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_NOARP) as libc::c_short;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut *req) } < 0 {
        return Err(os_error(format_args!("{name}: SIOCSIFFLAGS")));
    }
    Ok(())
}
