//! A fake OpenFlow 1.3 switch for the controller's tests (async, over
//! TCP): handshake, automatic echo, barrier, role and port/flow multipart
//! answers (each switchable), and helpers to wait for frames.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use daolinet_openflow::consts::{OFPCR_ROLE_EQUAL, OFPCR_ROLE_NOCHANGE};
use daolinet_openflow::{
    decode, FlowMod, FlowStats, Frame, Hello, Message, MultipartReply, MultipartReplyBody,
    MultipartRequestBody, Port, RoleMsg, SwitchFeatures,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any byte stream a switch talks over (TCP, TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
use tokio::time::timeout;

pub const WAIT: Duration = Duration::from_secs(5);

/// A fake OpenFlow switch.
pub struct FakeSwitch {
    pub sock: Box<dyn Io>,
    pub buf: BytesMut,
    /// Answer BARRIER_REQUESTs automatically.
    pub auto_barrier: bool,
    /// BARRIER_REQUESTs seen and not answered.
    pub barriers: Vec<u32>,
    /// The flow table reported to flow stats requests.
    pub table: Vec<FlowStats>,
    /// Answer ROLE_REQUESTs automatically (with the role asked).
    pub auto_role: bool,
    /// ROLE_REQUESTs seen and not answered.
    pub roles: Vec<(u32, RoleMsg)>,
    /// The generation id of the last master or slave request answered by
    /// [`FakeSwitch::role_reply`] (0: none).
    pub generation: u64,
    /// How long [`FakeSwitch::until`] waits for the frame it wants
    /// ([`WAIT`] unless the test says otherwise).
    pub wait: Duration,
}

impl FakeSwitch {
    pub async fn raw(addr: SocketAddr) -> FakeSwitch {
        Self::over(TcpStream::connect(addr).await.unwrap())
    }

    /// Over a connected socket (e.g. one opened inside a namespace).
    pub fn from_std(s: std::net::TcpStream) -> FakeSwitch {
        s.set_nonblocking(true).unwrap();
        Self::over(TcpStream::from_std(s).unwrap())
    }

    /// Over any stream (e.g. TLS).
    pub fn over(sock: impl Io + 'static) -> FakeSwitch {
        FakeSwitch {
            sock: Box::new(sock),
            buf: BytesMut::new(),
            auto_barrier: true,
            barriers: Vec::new(),
            table: Vec::new(),
            auto_role: true,
            roles: Vec::new(),
            generation: 0,
            wait: WAIT,
        }
    }

    /// Connects and completes the handshake as datapath `dpid`; returns the
    /// switch and the messages received up to the initial BARRIER.
    pub async fn connect(addr: SocketAddr, dpid: u64) -> (FakeSwitch, Vec<Frame>) {
        Self::connect_within(addr, dpid, WAIT).await
    }

    /// [`FakeSwitch::connect`], waiting up to `wait` for each step (for a
    /// test that connects many switches at once: the last of them is
    /// served after the others).
    pub async fn connect_within(
        addr: SocketAddr,
        dpid: u64,
        wait: Duration,
    ) -> (FakeSwitch, Vec<Frame>) {
        let mut s = FakeSwitch::raw(addr).await;
        s.wait = wait;
        let init = s.handshake(dpid).await;
        (s, init)
    }

    /// HELLO and FEATURES as `dpid`; the frames up to the initial BARRIER.
    pub async fn handshake(&mut self, dpid: u64) -> Vec<Frame> {
        let s = self;
        s.send(1, Message::Hello(Hello::new())).await;
        let f = s.until(|f| f.message == Message::FeaturesRequest).await;
        let xid = f.last().unwrap().xid;
        s.send(
            xid,
            Message::FeaturesReply(SwitchFeatures {
                datapath_id: dpid,
                n_buffers: 0,
                n_tables: 254,
                auxiliary_id: 0,
                capabilities: 0,
                reserved: 0,
            }),
        )
        .await;
        s.until(|f| f.message == Message::BarrierRequest).await
    }

    pub async fn send(&mut self, xid: u32, m: Message) {
        let mut b = BytesMut::new();
        m.encode(xid, &mut b).unwrap();
        self.sock.write_all(&b).await.unwrap();
    }

    /// Next frame (answering echo, barrier and port-desc requests).
    /// A switch's ROLE_REPLY to `r` (no stale check): NOCHANGE tells the
    /// generation id (EQUAL), master and slave requests set it.
    pub fn role_reply(&mut self, r: RoleMsg) -> RoleMsg {
        if r.role == OFPCR_ROLE_NOCHANGE {
            return RoleMsg {
                role: OFPCR_ROLE_EQUAL,
                generation_id: self.generation,
            };
        }
        if r.role != OFPCR_ROLE_EQUAL {
            self.generation = r.generation_id;
        }
        r
    }

    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, n)) = decode(&self.buf).unwrap() {
                let _ = self.buf.split_to(n);
                match &f.message {
                    Message::EchoRequest(d) => {
                        self.send(f.xid, Message::EchoReply(d.clone())).await
                    }
                    Message::BarrierRequest if self.auto_barrier => {
                        self.send(f.xid, Message::BarrierReply).await
                    }
                    Message::BarrierRequest => self.barriers.push(f.xid),
                    Message::RoleRequest(r) if self.auto_role => {
                        let reply = self.role_reply(*r);
                        self.send(f.xid, Message::RoleReply(reply)).await
                    }
                    Message::RoleRequest(r) => self.roles.push((f.xid, *r)),
                    Message::MultipartRequest(m)
                        if matches!(m.body, MultipartRequestBody::Flow(_)) =>
                    {
                        let table = self.table.clone();
                        self.send(
                            f.xid,
                            Message::MultipartReply(MultipartReply::new(MultipartReplyBody::Flow(
                                table,
                            ))),
                        )
                        .await
                    }
                    Message::MultipartRequest(_) => {
                        let ports = vec![Port::new(
                            1,
                            daolinet_openflow::MacAddr([2, 0, 0, 0, 0, 1]),
                            "uplink",
                        )];
                        self.send(
                            f.xid,
                            Message::MultipartReply(MultipartReply::new(
                                MultipartReplyBody::PortDesc(ports),
                            )),
                        )
                        .await
                    }
                    _ => {}
                }
                return Some(f);
            }
            match self.sock.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Frames up to and including the first that satisfies `pred`.
    pub async fn until(&mut self, pred: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut v = Vec::new();
        timeout(self.wait, async {
            loop {
                let f = self.next().await.expect("connection closed");
                let done = pred(&f);
                v.push(f);
                if done {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out; got {v:?}"));
        v
    }

    /// Frames up to and including the first that satisfies `pred`, with
    /// no deadline of its own (the caller's).
    pub async fn until_long(&mut self, pred: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut v = Vec::new();
        loop {
            let f = self.next().await.expect("connection closed");
            let done = pred(&f);
            v.push(f);
            if done {
                return v;
            }
        }
    }

    /// Frames received within `d` (quiet period).
    pub async fn within(&mut self, d: Duration) -> Vec<Frame> {
        let mut v = Vec::new();
        let _ = timeout(d, async {
            while let Some(f) = self.next().await {
                v.push(f);
            }
        })
        .await;
        v
    }

    /// True once the controller closed the connection (within WAIT).
    pub async fn closed(&mut self) -> bool {
        timeout(WAIT, async { while self.next().await.is_some() {} })
            .await
            .is_ok()
    }
}

pub fn flow_mods(fs: &[Frame]) -> Vec<&FlowMod> {
    fs.iter()
        .filter_map(|f| match &f.message {
            Message::FlowMod(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// What a switch holding the flow `fm` added reports in flow stats.
pub fn stats_of(fm: &FlowMod) -> FlowStats {
    FlowStats {
        table_id: fm.table_id,
        duration_sec: 1,
        duration_nsec: 0,
        priority: fm.priority,
        idle_timeout: fm.idle_timeout,
        hard_timeout: fm.hard_timeout,
        flags: fm.flags,
        cookie: fm.cookie,
        packet_count: 3,
        byte_count: 300,
        match_: fm.match_.clone(),
        instructions: fm.instructions.clone(),
    }
}
