//! Ctrl-C for long lab programs (the benchmarks built on the lab): a
//! signal only sets a flag, and the program panics at its next
//! [`check_stop`], so that the lab's guards stop the daemons and remove the
//! namespaces, containers and mounts instead of the process dying with
//! them in place.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT, SIGTERM or SIGHUP: stop measuring and clean up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Catch SIGINT, SIGTERM and SIGHUP (see [`check_stop`]), and ask for
/// SIGTERM when the parent dies. A program started by `cargo xtask bench`
/// runs in a process group of its own, so that Ctrl-C does not also kill
/// the daemons its cleanup stops itself; the parent-death signal then
/// stops it when the xtask dies.
pub fn catch_signals() {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(
                s,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
    // SAFETY: no arguments.
    if unsafe { libc::getppid() } == 1 {
        STOP.store(true, Ordering::Relaxed);
    }
}

/// Whether a signal asked to stop.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Panic (and so clean up through the guards) if a signal asked to stop.
#[track_caller]
pub fn check_stop() {
    if stop_requested() {
        panic!("interrupted: removing everything the benchmark created");
    }
}
