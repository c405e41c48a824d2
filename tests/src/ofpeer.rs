//! A bare OpenFlow 1.3 controller end for tests that must play a
//! misbehaving controller against real switches (a stale master that keeps
//! writing after a newer master took over): it listens, accepts one switch,
//! says HELLO, answers ECHO_REQUESTs while it waits, and sends whatever the
//! test asks (ROLE_REQUEST, FLOW_MOD) with a BARRIER to learn whether the
//! switch refused it.
// A test lab's failures are test failures: it panics with a clear message.
#![allow(clippy::panic)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use daolinet_openflow::{decode, ErrorCode, FlowMod, Frame, Hello, Message, RoleMsg};
use daolinet_testlab::Netns;

/// One switch's connection to this controller end.
#[derive(Debug)]
pub struct OfPeer {
    sock: TcpStream,
    buf: Vec<u8>,
    xid: u32,
    what: String,
}

impl OfPeer {
    /// Listens on `addr` in `ns` and accepts the first switch within
    /// `within` (switches retry with backoff), then exchanges HELLOs.
    #[track_caller]
    pub fn accept(ns: &Netns, addr: &str, within: Duration) -> OfPeer {
        let l: TcpListener = ns
            .listen(addr)
            .unwrap_or_else(|e| panic!("listen on {addr} in {ns}: {e}"));
        l.set_nonblocking(true)
            .unwrap_or_else(|e| panic!("nonblocking: {e}"));
        let sock = daolinet_testlab::wait_for(
            &format!("a switch connecting to {addr} in {ns}"),
            within,
            || l.accept().ok().map(|(s, _)| s),
        );
        sock.set_nonblocking(false)
            .unwrap_or_else(|e| panic!("blocking: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap_or_else(|e| panic!("read timeout: {e}"));
        let mut p = OfPeer {
            sock,
            buf: Vec::new(),
            xid: 100,
            what: format!("the switch on {addr}"),
        };
        p.send(&Message::Hello(Hello::new()));
        p.wait_for("its HELLO", Duration::from_secs(30), |m| {
            matches!(m, Message::Hello(_))
        });
        p
    }

    /// Sends `msg`; its xid.
    #[track_caller]
    pub fn send(&mut self, msg: &Message) -> u32 {
        self.xid += 1;
        let bytes = msg
            .to_bytes(self.xid)
            .unwrap_or_else(|e| panic!("encode {msg:?}: {e:?}"));
        self.sock
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.what));
        self.xid
    }

    /// The next frame within `within` (ECHO_REQUESTs answered on the way);
    /// `None` when none came.
    #[track_caller]
    pub fn next(&mut self, within: Duration) -> Option<Frame> {
        let deadline = Instant::now() + within;
        loop {
            match decode(&self.buf) {
                Ok(Some((f, n))) => {
                    self.buf.drain(..n);
                    if let Message::EchoRequest(data) = &f.message {
                        let reply = Message::EchoReply(data.clone())
                            .to_bytes(f.xid)
                            .unwrap_or_else(|e| panic!("encode echo: {e:?}"));
                        let _ = self.sock.write_all(&reply);
                        continue;
                    }
                    return Some(f);
                }
                Ok(None) => {}
                Err(e) => panic!("{} sent a bad message: {e:?}", self.what),
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) => panic!("{} closed the connection", self.what),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read from {}: {e}", self.what),
            }
        }
    }

    /// Skips frames until one satisfies `pred`; panics after `within`.
    #[track_caller]
    pub fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Frame {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(f) if pred(&f.message) => return f,
                Some(_) => {}
                None => panic!("{}: no {what} within {within:?}", self.what),
            }
        }
    }

    /// ROLE_REQUEST `role` with `generation`: the ROLE_REPLY, or the
    /// ERROR's code.
    #[track_caller]
    pub fn role(&mut self, role: u32, generation: u64) -> Result<RoleMsg, ErrorCode> {
        let xid = self.send(&Message::RoleRequest(RoleMsg {
            role,
            generation_id: generation,
        }));
        match self.reply_to(xid) {
            Message::RoleReply(r) => Ok(r),
            Message::Error(e) => Err(e
                .code()
                .unwrap_or_else(|| panic!("experimenter error to ROLE_REQUEST"))),
            other => panic!("{}: {other:?} answered a ROLE_REQUEST", self.what),
        }
    }

    /// `fm` then a BARRIER: `Ok` when the switch took it (no ERROR for it
    /// before the BARRIER_REPLY), else the ERROR's code.
    #[track_caller]
    pub fn flow_mod(&mut self, fm: FlowMod) -> Result<(), ErrorCode> {
        let xid = self.send(&Message::FlowMod(fm));
        let barrier = self.send(&Message::BarrierRequest);
        let mut refused = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self
                .next(left)
                .unwrap_or_else(|| panic!("{}: no BARRIER_REPLY", self.what));
            match f.message {
                Message::Error(e) if f.xid == xid => refused = e.code(),
                Message::BarrierReply if f.xid == barrier => break,
                _ => {}
            }
        }
        match refused {
            Some(code) => Err(code),
            None => Ok(()),
        }
    }

    /// The frame answering `xid` (others skipped).
    #[track_caller]
    fn reply_to(&mut self, xid: u32) -> Message {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(f) if f.xid == xid => return f.message,
                Some(_) => {}
                None => panic!("{}: no answer to xid {xid}", self.what),
            }
        }
    }
}
