//! Interface facts read with ioctls: MAC address and link state.

/// Read an interface's MAC address and whether it is running.
pub fn iface_info(name: &str) -> (Option<[u8; 6]>, bool) {
    // SAFETY: a plain datagram socket used only for ioctls, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return (None, false);
    }
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    // SAFETY: valid fd and ifreq.
    let mac = (unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) } == 0).then(|| {
        // SAFETY: the kernel filled ifru_hwaddr.
        let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mut m = [0u8; 6];
        for (d, s) in m.iter_mut().zip(sa.sa_data.iter()) {
            *d = *s as u8;
        }
        m
    });
    // SAFETY: valid fd and ifreq.
    let up = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } == 0
        // SAFETY: the kernel filled ifru_flags.
        && (unsafe { req.ifr_ifru.ifru_flags } as libc::c_int & libc::IFF_RUNNING) != 0;
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
    (mac, up)
}
