//! Kernel receive timestamps on TCP sockets (`SO_TIMESTAMPNS`): a read
//! that also says when the kernel received the data, so that a latency
//! measured from it includes the reader's own wake-up and scheduling.
//!
//! For TCP the kernel reports the software receive time of the *latest*
//! segment the read consumed (`CLOCK_REALTIME`). Used by the OpenFlow server
//! (PACKET_IN received -> answers written, `/metrics`) and by
//! `daolinet-loadgen` (PACKET_IN written -> FLOW_MOD received).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;

/// Asks the kernel to timestamp what `sock` receives.
pub fn enable(sock: &impl AsFd) -> io::Result<()> {
    setsockopt(sock, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Reads what `sock` holds into `buf` (at most its length) without
/// blocking semantics of its own (the socket's mode applies); returns the
/// bytes read and the kernel's receive time of the latest segment read,
/// when the kernel gave one (`enable` was called). 0 bytes: end of stream.
pub fn recv(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(TimeSpec);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut stamp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
                let nanos = u32::try_from(ts.tv_nsec()).unwrap_or(0);
                stamp = SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos));
            }
        }
    }
    Ok((msg.bytes, stamp))
}

/// How long ago (by the wall clock) `stamp` was, 0 when it is in the future
/// (a clock step).
pub fn age(stamp: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(stamp).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn reads_carry_a_kernel_receive_time() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (rx, _) = l.accept().unwrap();
        enable(&rx).unwrap();
        // The kernel switches timestamping on asynchronously (a static key
        // flipped by deferred work) when no socket had it yet: the first
        // segments may come without a stamp.
        let mut buf = [0u8; 16];
        let (before, stamp, after) = (0..100)
            .find_map(|_| {
                let before = SystemTime::now();
                tx.write_all(b"hello").unwrap();
                std::thread::sleep(Duration::from_millis(20));
                let (n, stamp) = recv(&rx, &mut buf).unwrap();
                let after = SystemTime::now();
                assert_eq!(&buf[..n], b"hello");
                stamp.map(|s| (before, s, after))
            })
            .expect("a receive timestamp within 100 tries");
        assert!(
            stamp >= before - Duration::from_millis(1),
            "{stamp:?} {before:?}"
        );
        // Received well before it was read: the sleep is in its age.
        assert!(age(stamp, after) >= Duration::from_millis(19));
        assert_eq!(age(after + Duration::from_secs(1), after), Duration::ZERO);
        // Without enable(): no stamp, same data path.
        let mut tx2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (rx2, _) = l.accept().unwrap();
        tx2.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(recv(&rx2, &mut buf).unwrap(), (1, None));
        drop(tx2);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(recv(&rx2, &mut buf).unwrap().0, 0);
    }
}
