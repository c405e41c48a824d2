//! The raw `bpf(BPF_PROG_TEST_RUN)` system call (aya does not expose it),
//! shared by the tests and examples that run the datapath's programs on a
//! frame without a device.

use std::io;
use std::os::fd::RawFd;

/// What one `BPF_PROG_TEST_RUN` gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgRun {
    /// The program's return value (its verdict).
    pub retval: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// Mean run time in nanoseconds over the repetitions.
    pub duration_ns: u32,
}

/// The `test` member of `union bpf_attr` (kernel 6.x layout).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `BPF_PROG_TEST_RUN` in `enum bpf_cmd`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Run `prog_fd` `repeat` times on `packet` (which the kernel does *not*
/// restore between runs); `ctx_in` is the program context (`__sk_buff` or
/// `xdp_md` bytes). Sizes that do not fit the kernel's 32-bit fields and
/// a refusal of the kernel are errors.
pub fn prog_test_run(
    prog_fd: RawFd,
    packet: &[u8],
    ctx_in: Option<&[u8]>,
    repeat: u32,
) -> io::Result<ProgRun> {
    let too_large =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} too large"));
    let mut out = vec![0u8; packet.len() + 512];
    let mut attr = TestAttr {
        prog_fd: u32::try_from(prog_fd)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative fd"))?,
        data_size_in: u32::try_from(packet.len()).map_err(|_| too_large("packet"))?,
        data_size_out: u32::try_from(out.len()).map_err(|_| too_large("packet"))?,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    if let Some(ctx) = ctx_in {
        attr.ctx_size_in = u32::try_from(ctx.len()).map_err(|_| too_large("context"))?;
        attr.ctx_in = ctx.as_ptr() as u64;
    }
    // SAFETY: attr is a valid bpf_attr prefix of the size we pass; the
    // buffers it points at outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(ProgRun {
        retval: attr.retval,
        packet: out,
        duration_ns: attr.duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor that is no BPF program is refused, not run.
    #[test]
    fn a_bad_descriptor_is_an_error() {
        assert!(prog_test_run(-1, &[0u8; 64], None, 1).is_err());
        let e = prog_test_run(0, &[0u8; 64], None, 1).expect_err("stdin is no BPF program");
        assert!(e.raw_os_error().is_some(), "{e}");
    }
}
