//! A fake OpenFlow 1.3 switch, sans-IO: feed it the bytes a controller
//! sent, it appends what a switch would answer (HELLO, FEATURES_REPLY,
//! PORT_DESC, ECHO, BARRIER, GET_CONFIG, ROLE, ASYNC...) and reports the
//! FLOW_MODs and PACKET_OUTs it received. Malformed input gets the OFPT_ERROR
//! the codec names, or a [`SwitchError`] when the stream cannot continue.

use bytes::BytesMut;
use daolinet_openflow::{
    encode, AsyncConfig, Decoder, Desc, ErrorMsg, FlowMod, Header, Hello, Message, MultipartReply,
    MultipartReplyBody, MultipartRequestBody, OxmField, Port, SwitchConfig, SwitchFeatures,
    TableStats, OFPC_FLOW_STATS, OFPC_PORT_STATS, OFPC_TABLE_STATS, OFPFC_ADD, OFPP_LOCAL,
    OFP_VERSION,
};

use crate::plan::{FlowKey, Plan, UPLINK_PORT};

/// Why a connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchError {
    /// The controller does not speak OpenFlow 1.3.
    Version(u8),
    /// The byte stream cannot be resynchronised.
    Framing(String),
    /// An answer could not be encoded (a bug).
    Encode(String),
}

impl std::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchError::Version(v) => {
                write!(f, "controller speaks OpenFlow version {v:#04x}, not 1.3")
            }
            SwitchError::Framing(s) => write!(f, "unrecoverable framing error: {s}"),
            SwitchError::Encode(s) => write!(f, "cannot encode an answer: {s}"),
        }
    }
}

impl std::error::Error for SwitchError {}

/// Messages received, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// FLOW_MOD (any command).
    pub flow_mods: u64,
    /// FLOW_MOD add whose match names one of our flows' key (any, not only outstanding).
    pub flow_mod_adds: u64,
    /// PACKET_OUT.
    pub packet_outs: u64,
    /// BARRIER_REQUEST (answered).
    pub barriers: u64,
    /// OFPT_ERROR received from the controller.
    pub errors_received: u64,
    /// Messages we answered with OFPT_ERROR (malformed or unsupported).
    pub errors_sent: u64,
    /// Everything else.
    pub other: u64,
}

impl Counters {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Counters) {
        self.flow_mods += o.flow_mods;
        self.flow_mod_adds += o.flow_mod_adds;
        self.packet_outs += o.packet_outs;
        self.barriers += o.barriers;
        self.errors_received += o.errors_received;
        self.errors_sent += o.errors_sent;
        self.other += o.other;
    }
}

/// The switch state.
#[derive(Debug)]
pub struct Switch {
    dpid: u64,
    ports: Vec<Port>,
    decoder: Decoder,
    config: SwitchConfig,
    features_sent: bool,
    /// What was received.
    pub counters: Counters,
    /// The first OFPT_ERROR received, for the report.
    pub first_error: Option<String>,
}

/// The key of a FLOW_MOD add: exact in_port, ipv4_src and ipv4_dst.
pub fn flow_key(fm: &FlowMod) -> Option<FlowKey> {
    if fm.command != OFPFC_ADD {
        return None;
    }
    let (mut in_port, mut src, mut dst) = (None, None, None);
    for f in &fm.match_.fields {
        match f {
            OxmField::InPort(p, None) => in_port = Some(*p),
            OxmField::Ipv4Src(a, None) => src = Some(*a),
            OxmField::Ipv4Dst(a, None) => dst = Some(*a),
            _ => {}
        }
    }
    Some(FlowKey {
        in_port: in_port?,
        src: src?,
        dst: dst?,
    })
}

impl Switch {
    /// Switch `s` of `plan`: its ports are the uplink and the containers' ports.
    pub fn new(plan: &Plan, s: usize) -> Switch {
        let mac = plan.host_mac(s);
        let mut ports = vec![
            Port::new(UPLINK_PORT, daolinet_openflow::MacAddr(mac), "uplink"),
            Port::new(
                OFPP_LOCAL,
                daolinet_openflow::MacAddr(mac),
                format!("lg-h{s}"),
            ),
        ];
        for j in 0..plan.containers {
            let c = plan.container(s, j);
            ports.push(Port::new(
                c.port,
                daolinet_openflow::MacAddr([0x02, 0x1e, 0, 0, s as u8, j as u8]),
                format!("lg{s}c{j}"),
            ));
        }
        Switch {
            dpid: plan.dpid(s),
            ports,
            decoder: Decoder::new(),
            config: SwitchConfig::default(),
            features_sent: false,
            counters: Counters::default(),
            first_error: None,
        }
    }

    /// Whether the controller asked for (and got) our features.
    pub fn features_sent(&self) -> bool {
        self.features_sent
    }

    /// The HELLO a switch sends on connecting.
    pub fn hello(&self, out: &mut BytesMut) -> Result<(), SwitchError> {
        put(out, 1, Message::Hello(Hello::new()))
    }

    /// Consumes every complete message at the front of `input`, appending
    /// answers to `out` and calling `on_flow` for each FLOW_MOD add keyed by
    /// in_port/ipv4_src/ipv4_dst. Returns the bytes consumed (the rest is an
    /// incomplete message).
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        mut on_flow: impl FnMut(FlowKey),
    ) -> Result<usize, SwitchError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            let Some(h) = Header::parse(rest) else {
                return Ok(used);
            };
            match self.decoder.decode(rest) {
                Ok(Some((frame, n))) => {
                    used += n;
                    self.handle(frame.xid, frame.message, rest, out, &mut on_flow)?;
                }
                Ok(None) => return Ok(used),
                Err(e) => {
                    if e.msg_type == Some(daolinet_openflow::OFPT_HELLO) {
                        return Err(SwitchError::Version(h.version));
                    }
                    let (xid, reply) = e.reply(rest);
                    put(out, xid, reply)?;
                    self.counters.errors_sent += 1;
                    match e.frame_len {
                        Some(n) if n > 0 => used += n,
                        _ => return Err(SwitchError::Framing(e.to_string())),
                    }
                }
            }
        }
    }

    fn handle(
        &mut self,
        xid: u32,
        msg: Message,
        raw: &[u8],
        out: &mut BytesMut,
        on_flow: &mut impl FnMut(FlowKey),
    ) -> Result<(), SwitchError> {
        match msg {
            Message::FlowMod(fm) => {
                self.counters.flow_mods += 1;
                if let Some(k) = flow_key(&fm) {
                    self.counters.flow_mod_adds += 1;
                    on_flow(k);
                }
            }
            Message::PacketOut(_) => self.counters.packet_outs += 1,
            Message::Hello(h) => {
                if !h.supports(OFP_VERSION) {
                    let e = ErrorMsg::new(daolinet_openflow::ErrorCode::HELLO_INCOMPATIBLE, raw);
                    put(out, xid, Message::Error(e))?;
                    return Err(SwitchError::Version(h.version));
                }
            }
            Message::EchoRequest(d) => put(out, xid, Message::EchoReply(d))?,
            Message::FeaturesRequest => {
                self.features_sent = true;
                put(
                    out,
                    xid,
                    Message::FeaturesReply(SwitchFeatures {
                        datapath_id: self.dpid,
                        n_buffers: 0,
                        n_tables: 254,
                        auxiliary_id: 0,
                        capabilities: OFPC_FLOW_STATS | OFPC_TABLE_STATS | OFPC_PORT_STATS,
                        reserved: 0,
                    }),
                )?;
            }
            Message::GetConfigRequest => put(out, xid, Message::GetConfigReply(self.config))?,
            Message::SetConfig(c) => self.config = c,
            Message::BarrierRequest => {
                self.counters.barriers += 1;
                put(out, xid, Message::BarrierReply)?;
            }
            Message::RoleRequest(r) => put(out, xid, Message::RoleReply(r))?,
            Message::GetAsyncRequest => {
                put(out, xid, Message::GetAsyncReply(AsyncConfig::default()))?
            }
            Message::MultipartRequest(req) => {
                let body = match req.body {
                    MultipartRequestBody::PortDesc => {
                        Some(MultipartReplyBody::PortDesc(self.ports.clone()))
                    }
                    MultipartRequestBody::Desc => Some(MultipartReplyBody::Desc(Desc {
                        mfr_desc: "DaoliNet".into(),
                        hw_desc: "daolinet-loadgen fake switch".into(),
                        sw_desc: env!("CARGO_PKG_VERSION").into(),
                        serial_num: "none".into(),
                        dp_desc: format!("dpid {:#x}", self.dpid),
                    })),
                    MultipartRequestBody::Flow(_) => Some(MultipartReplyBody::Flow(vec![])),
                    MultipartRequestBody::Table => {
                        Some(MultipartReplyBody::Table(vec![TableStats::default()]))
                    }
                    MultipartRequestBody::TableFeatures(_) => {
                        Some(MultipartReplyBody::TableFeatures(vec![]))
                    }
                    _ => None,
                };
                match body {
                    Some(b) => put(out, xid, Message::MultipartReply(MultipartReply::new(b)))?,
                    None => {
                        self.counters.errors_sent += 1;
                        let e = ErrorMsg::new(daolinet_openflow::ErrorCode::BAD_MULTIPART, raw);
                        put(out, xid, Message::Error(e))?;
                    }
                }
            }
            Message::Error(e) => {
                self.counters.errors_received += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{e:?}"));
                }
            }
            Message::SetAsync(_)
            | Message::EchoReply(_)
            | Message::GroupMod(_)
            | Message::MeterMod(_)
            | Message::PortMod(_)
            | Message::TableMod(_) => self.counters.other += 1,
            other => {
                // Switch-to-controller messages and anything a switch does
                // not take from a controller.
                self.counters.other += 1;
                self.counters.errors_sent += 1;
                let _ = other;
                let e = ErrorMsg::new(daolinet_openflow::ErrorCode::BAD_TYPE, raw);
                put(out, xid, Message::Error(e))?;
            }
        }
        Ok(())
    }
}

fn put(out: &mut BytesMut, xid: u32, m: Message) -> Result<(), SwitchError> {
    encode(&m, xid, out).map_err(|e| SwitchError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use daolinet_openflow::{
        decode, Action, Match, MultipartRequest, PacketOut, OFPT_ERROR, OFPT_FEATURES_REPLY,
    };

    fn msgs(b: &[u8]) -> Vec<(u32, Message)> {
        let mut v = Vec::new();
        let mut rest = b;
        while let Some((f, n)) = decode(rest).unwrap() {
            v.push((f.xid, f.message));
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        v
    }

    fn wire(ms: &[(u32, Message)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        for (x, m) in ms {
            encode(m, *x, &mut b).unwrap();
        }
        b.to_vec()
    }

    fn sw() -> Switch {
        Switch::new(&Plan::new(2, 3).unwrap(), 1)
    }

    #[test]
    fn handshake_answers_like_a_switch() {
        let mut s = sw();
        let mut out = BytesMut::new();
        s.hello(&mut out).unwrap();
        assert!(matches!(msgs(&out)[0].1, Message::Hello(_)));
        out.clear();
        let input = wire(&[
            (1, Message::Hello(Hello::new())),
            (2, Message::FeaturesRequest),
            (
                3,
                Message::MultipartRequest(MultipartRequest::new(MultipartRequestBody::PortDesc)),
            ),
            (4, Message::GetConfigRequest),
            (5, Message::EchoRequest(vec![1, 2])),
            (6, Message::BarrierRequest),
        ]);
        let used = s.feed(&input, &mut out, |_| panic!("no flow")).unwrap();
        assert_eq!(used, input.len());
        assert!(s.features_sent());
        let got = msgs(&out);
        assert_eq!(got.len(), 5);
        match &got[0] {
            (2, Message::FeaturesReply(f)) => assert_eq!(f.datapath_id, 0xda1c_0000_0002),
            o => panic!("{o:?}"),
        }
        match &got[1] {
            (3, Message::MultipartReply(r)) => match &r.body {
                MultipartReplyBody::PortDesc(p) => assert_eq!(p.len(), 5),
                o => panic!("{o:?}"),
            },
            o => panic!("{o:?}"),
        }
        assert!(matches!(got[2], (4, Message::GetConfigReply(_))));
        assert_eq!(got[3], (5, Message::EchoReply(vec![1, 2])));
        assert_eq!(got[4], (6, Message::BarrierReply));
    }

    #[test]
    fn flow_mods_are_keyed_and_packet_outs_counted() {
        let mut s = sw();
        let key = FlowKey {
            in_port: 10,
            src: "10.200.1.10".parse().unwrap(),
            dst: "10.200.1.11".parse().unwrap(),
        };
        let fm = FlowMod::add(
            Match::new()
                .in_port(10)
                .eth_type(0x0800)
                .ipv4_src(key.src)
                .ipv4_dst(key.dst),
        )
        .apply(vec![Action::output(11)]);
        let no_ip = FlowMod::add(Match::new().in_port(10)).apply(vec![Action::output(11)]);
        let input = wire(&[
            (7, Message::FlowMod(fm)),
            (8, Message::FlowMod(no_ip)),
            (
                9,
                Message::PacketOut(PacketOut::new(10, vec![Action::output(11)], vec![0; 60])),
            ),
        ]);
        let mut keys = Vec::new();
        let mut out = BytesMut::new();
        // Fed in two halves: the first call keeps the partial message.
        let cut = input.len() - 10;
        let n = s.feed(&input[..cut], &mut out, |k| keys.push(k)).unwrap();
        assert!(n < cut);
        let m = s.feed(&input[n..], &mut out, |k| keys.push(k)).unwrap();
        assert_eq!(n + m, input.len());
        assert_eq!(keys, vec![key]);
        assert_eq!(s.counters.flow_mods, 2);
        assert_eq!(s.counters.flow_mod_adds, 1);
        assert_eq!(s.counters.packet_outs, 1);
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_input_gets_errors_not_panics() {
        let mut s = sw();
        let mut out = BytesMut::new();
        // A FLOW_MOD with a truncated body: skipped with an error.
        let mut bad = vec![4, 14, 0, 12, 0, 0, 0, 9, 1, 2, 3, 4];
        bad.extend(wire(&[(10, Message::BarrierRequest)]));
        let used = s.feed(&bad, &mut out, |_| {}).unwrap();
        assert_eq!(used, bad.len());
        let got = msgs(&out);
        assert_eq!(got[0].0, 9);
        assert!(matches!(got[0].1, Message::Error(_)));
        assert_eq!(got[1], (10, Message::BarrierReply));
        // A header with length < 8 cannot be resynchronised.
        let err = s.feed(&[4, 2, 0, 4, 0, 0, 0, 0], &mut out, |_| {});
        assert!(matches!(err, Err(SwitchError::Framing(_))));
        // An OpenFlow 1.0 HELLO without 1.3 support.
        let mut s = sw();
        let err = s.feed(&[1, 0, 0, 8, 0, 0, 0, 1], &mut BytesMut::new(), |_| {});
        assert!(matches!(err, Err(SwitchError::Version(1))), "{err:?}");
        // A PACKET_IN from the controller: answered with BAD_TYPE.
        let mut s = sw();
        let mut out = BytesMut::new();
        let pi = wire(&[(
            3,
            Message::PacketIn(daolinet_openflow::PacketIn::new(1, 0, vec![0; 20])),
        )]);
        s.feed(&pi, &mut out, |_| {}).unwrap();
        assert_eq!(Header::parse(&out).unwrap().msg_type, OFPT_ERROR);
        assert_ne!(Header::parse(&out).unwrap().msg_type, OFPT_FEATURES_REPLY);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of a mixed stream, and
        // byte flips in it.
        let base = wire(&[
            (1, Message::Hello(Hello::new())),
            (2, Message::FeaturesRequest),
            (
                3,
                Message::MultipartRequest(MultipartRequest::new(MultipartRequestBody::Desc)),
            ),
            (
                4,
                Message::FlowMod(FlowMod::add(
                    Match::new().in_port(3).ipv4_src("1.2.3.4".parse().unwrap()),
                )),
            ),
        ]);
        for i in 0..base.len() {
            for v in [0u8, 1, 4, 0x7f, 0xff] {
                let mut b = base.clone();
                b[i] = v;
                let mut s = sw();
                let mut out = BytesMut::new();
                let _ = s.feed(&b, &mut out, |_| {});
                let _ = s.feed(&b[..i], &mut out, |_| {});
            }
        }
    }
}
