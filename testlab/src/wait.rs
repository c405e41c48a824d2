//! Waiting for a condition by polling, with a deadline: never a sleep as
//! synchronisation. Deadlines are generous (CI runs on 2 loaded cores);
//! they bound a failure, they do not time a success.

use std::time::{Duration, Instant};

/// The default deadline for a condition that should hold within a moment.
pub const DEADLINE: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(50);

/// Poll `f` until it returns `Some`, at most `within`; panics with `what`
/// on timeout ([`wait_poll`] also shows what was last seen).
#[track_caller]
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Poll `f` until it returns true, at most `within`; panics with `what` on
/// timeout.
#[track_caller]
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    wait_for(what, within, || f().then_some(()))
}

/// Poll `f` until it returns true, at most `within`; whether it did.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// What a poll saw: done with a value, or not yet with a description of
/// the current state (shown when the deadline passes).
#[derive(Debug)]
pub enum Poll<T> {
    /// The condition holds.
    Ready(T),
    /// Not yet; what was seen.
    Pending(String),
}

/// Like [`wait_for`], but the timeout message includes what `f` last saw.
#[track_caller]
pub fn wait_poll<T>(what: &str, within: Duration, mut f: impl FnMut() -> Poll<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Poll::Ready(v) => return v,
            Poll::Pending(seen) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen:\n{seen}")
            }
            Poll::Pending(_) => std::thread::sleep(POLL),
        }
    }
}
