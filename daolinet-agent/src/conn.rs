//! One OpenFlow connection of the switch, as a sans-IO state machine:
//! bytes and clock readings in, messages for the switch and bytes to write
//! out. No sockets: the event loop ([`crate::engine`]) feeds it.
//!
//! What it does on its own (switch side of OpenFlow 1.3):
//! - **Framing**: messages may arrive split across reads or many in one;
//!   a malformed message gets the OFPT_ERROR the codec names (in turn, as
//!   an [`Input::Reply`]) and is skipped, also when its declared length is still arriving; a header
//!   length below 8 cannot be resynchronised and closes the connection.
//! - **HELLO and version**: our HELLO is queued at creation. The peer's
//!   first message must be a HELLO that supports OpenFlow 1.3 (version
//!   bitmap or header version); otherwise OFPET_HELLO_FAILED/INCOMPATIBLE
//!   and close, as Open vSwitch does. Nothing reaches the switch before.
//! - **Echo keepalive**: ECHO_REQUESTs are answered here (the reply is
//!   handed out as an [`Input::Reply`], so that it goes in turn with the
//!   replies to the messages before it). After
//!   [`ConnConfig::echo_interval_ns`] without a sign of life (bytes
//!   received, or the peer taking our bytes) an ECHO_REQUEST goes out;
//!   another silent interval closes the connection. A peer that never
//!   sends its HELLO is closed after two intervals.
//! - **Backpressure**: output waits in [`Conn::output`] until the edge
//!   writes it. Above [`ConnConfig::high_water`] the connection is
//!   *congested*: the edge stops reading it (so a peer that sends requests
//!   without reading the replies stops being served, not buffered for),
//!   and asynchronous messages to it (PACKET_IN, FLOW_REMOVED,
//!   PORT_STATUS) are dropped and counted, as Open vSwitch drops
//!   PACKET_INs for a controller that does not keep up. Above
//!   [`ConnConfig::max_output`] the connection closes.
//!
//! Roles and asynchronous-message configuration are switch-wide state (a
//! new master demotes the others, generation ids are compared across
//! connections): they live in the switch's sessions
//! ([`crate::ofswitch::Switch`]), keyed by connection.

use bytes::{Bytes, BytesMut};
use daolinet_openflow::{
    self as of, DecodeError, Decoder, ErrorCode, ErrorMsg, Frame, Hello, Message,
};

/// Timers and limits of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// Send ECHO_REQUEST after this much silence (ns); close after twice.
    pub echo_interval_ns: u64,
    /// Largest message accepted from the peer.
    pub max_message_len: usize,
    /// Queued output bytes from which the connection is congested: not
    /// read, asynchronous messages dropped.
    pub high_water: usize,
    /// Queued output bytes beyond which the connection is closed.
    pub max_output: usize,
}

/// Default echo interval: 5 s.
pub const ECHO_INTERVAL_NS: u64 = 5_000_000_000;

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            echo_interval_ns: ECHO_INTERVAL_NS,
            max_message_len: of::MAX_MESSAGE_LEN,
            high_water: 4 << 20,
            max_output: 256 << 20,
        }
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer's HELLO does not support OpenFlow 1.3.
    Incompatible,
    /// The peer's first message was not a HELLO.
    NoHello,
    /// The peer refused our HELLO (an OFPT_ERROR instead of its HELLO).
    HelloFailed,
    /// No HELLO from the peer within two echo intervals.
    HelloTimeout,
    /// The byte stream cannot be framed any more.
    Unframeable,
    /// No sign of life for two echo intervals.
    EchoTimeout,
    /// More output queued than [`ConnConfig::max_output`]: the peer does
    /// not read.
    Stuck,
    /// The peer closed the connection.
    PeerClosed,
    /// A read or write failed.
    Io(String),
    /// The switch closed it.
    BySwitch,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Incompatible => write!(f, "peer does not speak OpenFlow 1.3"),
            CloseReason::NoHello => write!(f, "first message was not HELLO"),
            CloseReason::HelloFailed => write!(f, "peer refused the handshake"),
            CloseReason::HelloTimeout => write!(f, "no HELLO from the peer"),
            CloseReason::Unframeable => write!(f, "unrecoverable framing error"),
            CloseReason::EchoTimeout => write!(f, "echo keepalive timed out"),
            CloseReason::Stuck => write!(f, "peer does not read its messages"),
            CloseReason::PeerClosed => write!(f, "closed by the peer"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::BySwitch => write!(f, "closed by the switch"),
        }
    }
}

/// What the connection hands to the switch, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The handshake completed (the peer's HELLO supports 1.3).
    Up,
    /// A reply composed here (ECHO_REPLY, the OFPT_ERROR for a malformed
    /// message), to queue with [`Conn::send`] in turn with the replies to
    /// the messages before it.
    Reply(u32, Message),
    /// A message for the switch, with its bytes as received (echoed in
    /// errors).
    Message(Frame, Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    Up,
    Closed,
}

/// The connection state machine.
#[derive(Debug)]
pub struct Conn {
    cfg: ConnConfig,
    phase: Phase,
    reason: Option<CloseReason>,
    decoder: Decoder,
    input: BytesMut,
    /// Bytes of a rejected message still to discard.
    skip: usize,
    out: BytesMut,
    started_ns: u64,
    /// Last sign of life: bytes received or output taken by the peer.
    alive_ns: u64,
    /// When our unanswered ECHO_REQUEST went out.
    echo_sent_ns: Option<u64>,
    next_xid: u32,
    /// Asynchronous messages dropped while congested.
    pub dropped: u64,
    /// Messages answered with an OFPT_ERROR here (malformed, handshake).
    pub errors_sent: u64,
}

impl Conn {
    /// A new connection at `now_ns`, with our HELLO queued.
    pub fn new(cfg: ConnConfig, now_ns: u64) -> Self {
        let mut c = Conn {
            cfg,
            phase: Phase::Hello,
            reason: None,
            decoder: Decoder::new().max_message_len(cfg.max_message_len),
            input: BytesMut::new(),
            skip: 0,
            out: BytesMut::with_capacity(4096),
            started_ns: now_ns,
            alive_ns: now_ns,
            echo_sent_ns: None,
            next_xid: 0,
            dropped: 0,
            errors_sent: 0,
        };
        let xid = c.xid();
        c.put(xid, &Message::Hello(Hello::new()));
        c
    }

    fn xid(&mut self) -> u32 {
        // Our own requests (HELLO, ECHO) use xids from the top of the
        // space, away from the switch's asynchronous messages.
        self.next_xid = self.next_xid.wrapping_add(1);
        0x8000_0000 | self.next_xid
    }

    /// True once the peer's HELLO was accepted (and not closed since).
    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// True once closed; the edge writes what [`Conn::output`] still holds
    /// (best effort) and drops the transport.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Why it closed.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.reason.as_ref()
    }

    /// Close (the edge's reasons: peer closed, I/O error, the switch).
    pub fn close(&mut self, why: CloseReason) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.reason = Some(why);
        }
    }

    /// True while more output than [`ConnConfig::high_water`] waits.
    pub fn is_congested(&self) -> bool {
        self.out.len() >= self.cfg.high_water
    }

    /// True when the edge should read the peer's bytes: open and not
    /// congested.
    pub fn wants_read(&self) -> bool {
        self.phase != Phase::Closed && !self.is_congested()
    }

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The peer took `n` bytes of [`Conn::output`] at `now_ns`.
    pub fn consumed(&mut self, n: usize, now_ns: u64) {
        let n = n.min(self.out.len());
        if n > 0 {
            let _ = self.out.split_to(n);
            self.alive_ns = now_ns;
            if self.out.is_empty() && self.out.capacity() > 1 << 20 {
                // Do not keep a large dump's buffer around.
                self.out = BytesMut::with_capacity(4096);
            }
        }
    }

    fn put(&mut self, xid: u32, msg: &Message) {
        if let Err(e) = of::encode(msg, xid, &mut self.out) {
            tracing::warn!(msg_type = msg.msg_type(), "message not sent: {e}");
        }
        if self.out.len() > self.cfg.max_output {
            self.close(CloseReason::Stuck);
        }
    }

    /// Queue a reply or request. On a closed connection it is the last
    /// word (e.g. the error that closed it), written once if possible;
    /// a connection closed because it did not read takes nothing more.
    pub fn send(&mut self, xid: u32, msg: &Message) {
        if self.reason != Some(CloseReason::Stuck) {
            self.put(xid, msg);
        }
    }

    /// Queue an asynchronous message (PACKET_IN, FLOW_REMOVED,
    /// PORT_STATUS): dropped (and counted) while congested or before the
    /// handshake. Returns whether it was queued.
    pub fn send_async(&mut self, xid: u32, msg: &Message) -> bool {
        if self.phase != Phase::Up || self.is_congested() {
            self.dropped += 1;
            return false;
        }
        self.put(xid, msg);
        true
    }

    fn error(&mut self, code: ErrorCode, xid: u32, offending: &[u8], data: Option<&[u8]>) {
        self.errors_sent += 1;
        let msg = match data {
            Some(d) => Message::Error(ErrorMsg::Standard {
                err_type: code.err_type,
                code: code.code,
                data: d.to_vec(),
            }),
            None => Message::Error(ErrorMsg::new(code, offending)),
        };
        self.put(xid, &msg);
    }

    /// Take received bytes at `now_ns`: complete messages are framed and
    /// decoded, handshake and echo handled here, the rest appended to
    /// `inputs` in order. A partial message waits for the next call.
    pub fn receive(&mut self, data: &[u8], now_ns: u64, inputs: &mut Vec<Input>) {
        if self.phase == Phase::Closed || data.is_empty() {
            return;
        }
        self.alive_ns = now_ns;
        self.echo_sent_ns = None;
        let mut data = data;
        if self.skip > 0 {
            let n = self.skip.min(data.len());
            self.skip -= n;
            data = &data[n..];
        }
        self.input.extend_from_slice(data);
        if self.phase == Phase::Hello
            && self.input.len() >= 8
            && self.input[1] != of::OFPT_HELLO
            && self.input[1] != of::OFPT_ERROR
        {
            // Not an OpenFlow peer saying HELLO: no need to wait for the
            // rest of whatever it claims to send.
            let xid =
                u32::from_be_bytes([self.input[4], self.input[5], self.input[6], self.input[7]]);
            let head = self.input.split_to(8);
            self.input.clear();
            self.error(
                ErrorCode::HELLO_INCOMPATIBLE,
                xid,
                &head,
                Some(b"expected HELLO first"),
            );
            self.close(CloseReason::NoHello);
            return;
        }
        while self.phase != Phase::Closed && !self.input.is_empty() {
            match self.decoder.decode(&self.input) {
                Ok(Some((frame, n))) => {
                    let raw = self.input.split_to(n).freeze();
                    self.message(frame, raw, inputs);
                }
                Ok(None) => break,
                Err(e) => self.malformed(&e, inputs),
            }
        }
        if self.input.is_empty() && self.input.capacity() > 1 << 20 {
            self.input = BytesMut::new();
        }
    }

    fn malformed(&mut self, e: &DecodeError, inputs: &mut Vec<Input>) {
        let (xid, reply) = e.reply(&self.input);
        self.errors_sent += 1;
        tracing::debug!("malformed message from the peer: {e}");
        if self.phase == Phase::Hello {
            self.put(xid, &reply);
            self.input.clear();
            self.close(CloseReason::NoHello);
            return;
        }
        inputs.push(Input::Reply(xid, reply));
        match e.frame_len {
            Some(n) if n <= self.input.len() => {
                let _ = self.input.split_to(n);
            }
            Some(n) => {
                self.skip = n - self.input.len();
                self.input.clear();
            }
            None => {
                self.input.clear();
                self.close(CloseReason::Unframeable);
            }
        }
    }

    fn message(&mut self, frame: Frame, raw: Bytes, inputs: &mut Vec<Input>) {
        let xid = frame.xid;
        match (self.phase, frame.message) {
            (Phase::Closed, _) => {}
            (Phase::Hello, Message::Hello(h)) => {
                if h.supports(of::OFP_VERSION) {
                    self.phase = Phase::Up;
                    inputs.push(Input::Up);
                } else {
                    self.error(
                        ErrorCode::HELLO_INCOMPATIBLE,
                        xid,
                        &raw,
                        Some(b"daolinet-agent speaks OpenFlow 1.3 (0x04) only"),
                    );
                    self.close(CloseReason::Incompatible);
                }
            }
            (Phase::Hello, Message::Error(_)) => self.close(CloseReason::HelloFailed),
            (Phase::Hello, _) => {
                self.error(
                    ErrorCode::HELLO_INCOMPATIBLE,
                    xid,
                    &raw,
                    Some(b"expected HELLO first"),
                );
                self.close(CloseReason::NoHello);
            }
            (Phase::Up, Message::EchoRequest(d)) => {
                inputs.push(Input::Reply(xid, Message::EchoReply(d)))
            }
            (Phase::Up, Message::EchoReply(_)) | (Phase::Up, Message::Hello(_)) => {}
            (Phase::Up, message) => inputs.push(Input::Message(Frame { xid, message }, raw)),
        }
    }

    /// When [`Conn::on_timer`] must next run (CLOCK_MONOTONIC ns).
    pub fn next_timer(&self) -> u64 {
        let i = self.cfg.echo_interval_ns;
        match (self.phase, self.echo_sent_ns) {
            (Phase::Closed, _) => u64::MAX,
            (Phase::Hello, _) => self.started_ns.saturating_add(2 * i),
            (Phase::Up, Some(sent)) => sent.max(self.alive_ns).saturating_add(i),
            (Phase::Up, None) => self.alive_ns.saturating_add(i),
        }
    }

    /// Keepalive at `now_ns`: probe a silent peer, close a dead one.
    pub fn on_timer(&mut self, now_ns: u64) {
        let i = self.cfg.echo_interval_ns;
        match self.phase {
            Phase::Closed => {}
            Phase::Hello => {
                if now_ns >= self.started_ns.saturating_add(2 * i) {
                    self.close(CloseReason::HelloTimeout);
                }
            }
            Phase::Up => match self.echo_sent_ns {
                Some(sent) if now_ns >= sent.max(self.alive_ns).saturating_add(i) => {
                    if self.alive_ns <= sent {
                        self.close(CloseReason::EchoTimeout);
                    } else {
                        // Alive since (it took our bytes): probe again later.
                        self.echo_sent_ns = None;
                    }
                }
                Some(_) => {}
                None if now_ns >= self.alive_ns.saturating_add(i) => {
                    let xid = self.xid();
                    self.put(xid, &Message::EchoRequest(Vec::new()));
                    self.echo_sent_ns = Some(now_ns);
                }
                None => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn bytes(xid: u32, m: &Message) -> Vec<u8> {
        m.to_bytes(xid).unwrap()
    }

    fn hello() -> Vec<u8> {
        bytes(1, &Message::Hello(Hello::new()))
    }

    /// Decode everything in the output.
    fn sent(c: &mut Conn) -> Vec<Frame> {
        let mut v = Vec::new();
        let mut rest = c.output().to_vec();
        while let Ok(Some((f, n))) = of::decode(&rest) {
            v.push(f);
            rest.drain(..n);
        }
        assert!(rest.is_empty(), "output ends in a partial message");
        let n = c.output().len();
        c.consumed(n, 0);
        v
    }

    fn up(now: u64) -> Conn {
        let mut c = Conn::new(ConnConfig::default(), now);
        let mut i = Vec::new();
        c.receive(&hello(), now, &mut i);
        assert_eq!(i, [Input::Up]);
        let f = sent(&mut c);
        assert!(matches!(
            f[..],
            [Frame {
                message: Message::Hello(_),
                ..
            }]
        ));
        c
    }

    fn messages(i: &[Input]) -> Vec<(u32, Message)> {
        i.iter()
            .filter_map(|x| match x {
                Input::Message(f, _) => Some((f.xid, f.message.clone())),
                Input::Up | Input::Reply(..) => None,
            })
            .collect()
    }

    #[test]
    fn handshake_needs_a_hello_supporting_1_3_first() {
        let c = up(0);
        assert!(c.is_up());
        // A 1.0-only peer.
        let mut c = Conn::new(ConnConfig::default(), 0);
        sent(&mut c);
        let mut i = Vec::new();
        c.receive(
            &bytes(
                3,
                &Message::Hello(Hello {
                    version: 1,
                    elements: vec![],
                }),
            ),
            0,
            &mut i,
        );
        assert!(i.is_empty());
        assert_eq!(c.close_reason(), Some(&CloseReason::Incompatible));
        let f = sent(&mut c);
        assert!(
            matches!(&f[..], [Frame { xid: 3, message: Message::Error(e) }] if e.code() == Some(ErrorCode::HELLO_INCOMPATIBLE))
        );
        // Anything but HELLO first: refused, and nothing reaches the switch.
        let mut c = Conn::new(ConnConfig::default(), 0);
        sent(&mut c);
        let fm: of::FlowMod = "ip actions=output:1".parse().unwrap();
        c.receive(&bytes(4, &Message::FlowMod(fm)), 0, &mut i);
        assert!(i.is_empty());
        assert_eq!(c.close_reason(), Some(&CloseReason::NoHello));
        // Garbage first.
        let mut c = Conn::new(ConnConfig::default(), 0);
        c.receive(&[0xde; 40], 0, &mut i);
        assert!(i.is_empty() && c.is_closed());
        // The peer refuses our HELLO.
        let mut c = Conn::new(ConnConfig::default(), 0);
        let e = Message::Error(ErrorMsg::new(ErrorCode::HELLO_INCOMPATIBLE, &[]));
        c.receive(&bytes(1, &e), 0, &mut i);
        assert_eq!(c.close_reason(), Some(&CloseReason::HelloFailed));
    }

    #[test]
    fn messages_split_across_reads_or_together_come_out_whole_and_in_order() {
        let mut wire = hello();
        let mut want = Vec::new();
        for x in 0..40u32 {
            let m = match x % 4 {
                0 => Message::BarrierRequest,
                1 => Message::FlowMod(
                    format!("ip,nw_dst=10.0.0.{x} actions=output:2")
                        .parse()
                        .unwrap(),
                ),
                2 => Message::FeaturesRequest,
                _ => Message::PacketOut(of::PacketOut::new(
                    1,
                    vec![of::Action::output(2)],
                    vec![x as u8; 60],
                )),
            };
            wire.extend(bytes(100 + x, &m));
            want.push((100 + x, m));
        }
        // Every split size, from one byte at a time to all at once.
        for chunk in [1, 2, 3, 7, 8, 9, 64, 100, 1000, wire.len()] {
            let mut c = Conn::new(ConnConfig::default(), 0);
            let mut i = Vec::new();
            for part in wire.chunks(chunk) {
                c.receive(part, 0, &mut i);
            }
            assert_eq!(i.first(), Some(&Input::Up), "chunk {chunk}");
            assert_eq!(messages(&i), want, "chunk {chunk}");
            // Raw bytes are the message as received.
            if let Some(Input::Message(f, raw)) = i.get(1) {
                assert_eq!(raw[..], bytes(f.xid, &f.message)[..]);
            }
        }
    }

    #[test]
    fn echo_requests_are_answered_and_malformed_messages_skipped_in_turn() {
        let mut c = up(0);
        let mut i = Vec::new();
        let mut wire = bytes(9, &Message::EchoRequest(vec![1, 2]));
        // Unknown type, declared length longer than what has arrived yet:
        // answered, and its remaining bytes skipped when they come.
        let mut bad = vec![4, 0xee, 0, 40, 0, 0, 0, 10];
        bad.extend([0u8; 32]);
        wire.extend(&bad[..20]);
        c.receive(&wire, 0, &mut i);
        let mut rest = bad[20..].to_vec();
        rest.extend(bytes(11, &Message::BarrierRequest));
        c.receive(&rest, 0, &mut i);
        assert_eq!(messages(&i), [(11, Message::BarrierRequest)]);
        // The replies are handed out in turn: echo, error, then the barrier.
        assert!(matches!(&i[0], Input::Reply(9, Message::EchoReply(d)) if d == &[1, 2]));
        assert!(matches!(&i[1], Input::Reply(10, Message::Error(_))));
        assert!(matches!(&i[2], Input::Message(f, _) if f.xid == 11));
        assert!(sent(&mut c).is_empty());
        // A header length below 8: answered, then closed.
        c.receive(&[4, 0, 0, 4, 0, 0, 0, 12], 0, &mut i);
        assert_eq!(c.close_reason(), Some(&CloseReason::Unframeable));
        assert!(matches!(
            i.last(),
            Some(Input::Reply(12, Message::Error(_)))
        ));
        // Nothing more is taken.
        c.receive(&bytes(13, &Message::BarrierRequest), 0, &mut i);
        assert_eq!(messages(&i).len(), 1);
    }

    #[test]
    fn a_silent_peer_is_probed_then_closed_and_one_that_never_says_hello_too() {
        let i = ECHO_INTERVAL_NS;
        let mut c = up(0);
        assert_eq!(c.next_timer(), i);
        c.on_timer(i - 1);
        assert!(sent(&mut c).is_empty());
        c.on_timer(i);
        let f = sent(&mut c);
        assert!(matches!(
            f[..],
            [Frame {
                message: Message::EchoRequest(_),
                ..
            }]
        ));
        // It answers: alive, probed again one interval later.
        let mut inputs = Vec::new();
        c.receive(
            &bytes(f[0].xid, &Message::EchoReply(vec![])),
            i + 10 * MS,
            &mut inputs,
        );
        assert!(inputs.is_empty());
        c.on_timer(2 * i);
        assert!(!c.is_closed());
        c.on_timer(2 * i + 10 * MS);
        assert_eq!(sent(&mut c).len(), 1);
        // It stays silent: closed one interval after the probe.
        c.on_timer(3 * i + 10 * MS - 1);
        assert!(!c.is_closed());
        c.on_timer(3 * i + 10 * MS);
        assert_eq!(c.close_reason(), Some(&CloseReason::EchoTimeout));
        assert_eq!(c.next_timer(), u64::MAX);

        // A peer that reads our (large) output slowly but never sends is
        // alive: no close while it takes bytes.
        let mut c = up(0);
        c.on_timer(i);
        let n = sent(&mut c).len();
        assert_eq!(n, 1);
        c.send(1, &Message::EchoReply(vec![0; 1000]));
        c.consumed(100, i + i / 2);
        c.on_timer(2 * i);
        assert!(!c.is_closed());

        // A controller that never answers our HELLO.
        let mut c = Conn::new(ConnConfig::default(), 0);
        c.on_timer(2 * i - 1);
        assert!(!c.is_closed());
        assert_eq!(c.next_timer(), 2 * i);
        c.on_timer(2 * i);
        assert_eq!(c.close_reason(), Some(&CloseReason::HelloTimeout));
    }

    #[test]
    fn a_peer_that_does_not_read_is_not_read_then_dropped_asynchronously_then_closed() {
        let cfg = ConnConfig {
            high_water: 1000,
            max_output: 5000,
            ..Default::default()
        };
        let mut c = Conn::new(cfg, 0);
        let mut i = Vec::new();
        c.receive(&hello(), 0, &mut i);
        let pi = Message::PacketIn(of::PacketIn::new(1, 0, vec![0; 200]));
        let mut queued = 0;
        while c.send_async(0, &pi) {
            queued += 1;
        }
        // Congested: PACKET_INs dropped and counted, reading paused.
        assert!(queued >= 4 && c.is_congested() && !c.wants_read());
        assert_eq!(c.dropped, 1);
        assert!(!c.send_async(0, &pi));
        assert_eq!(c.dropped, 2);
        // Replies still go (reading is paused, so they are bounded by what
        // was already read)...
        c.send(5, &Message::BarrierReply);
        assert!(!c.is_closed());
        // ...up to the hard limit.
        while !c.is_closed() {
            c.send(6, &Message::EchoReply(vec![0; 500]));
        }
        assert_eq!(c.close_reason(), Some(&CloseReason::Stuck));
        // Once the peer reads, the connection is served again.
        let mut c = Conn::new(cfg, 0);
        c.receive(&hello(), 0, &mut i);
        while c.send_async(0, &pi) {}
        let n = c.output().len();
        c.consumed(n, 1);
        assert!(c.wants_read() && c.send_async(0, &pi));
        // Asynchronous messages wait for the handshake.
        let mut c = Conn::new(cfg, 0);
        assert!(!c.send_async(0, &pi));
    }
}
