//! The [`Message`] enum, framing ([`Decoder`], [`decode`], [`encode`]) and
//! the per-message body types.

pub mod basic;
pub mod flow;
pub mod group;
pub mod port;

use bytes::{BufMut, BytesMut};

use crate::consts::*;
use crate::error::{DecodeError, EncodeError, ErrorCode, Fail};
use crate::header::Header;
use crate::multipart::{MultipartReply, MultipartRequest};

use basic::*;
use flow::*;
use group::*;
use port::*;

pub(crate) const fn bad_len(what: &'static str) -> Fail {
    Fail::new(ErrorCode::BAD_LEN, what)
}

/// Fail with OFPBRC_BAD_LEN unless `body` is exactly `n` bytes.
pub(crate) fn exact(body: &[u8], n: usize) -> Result<(), Fail> {
    if body.len() == n {
        Ok(())
    } else {
        Err(bad_len("wrong length for message type"))
    }
}

/// An OpenFlow 1.3 message (without its xid; see [`Frame`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// OFPT_HELLO.
    Hello(Hello),
    /// OFPT_ERROR.
    Error(ErrorMsg),
    /// OFPT_ECHO_REQUEST with arbitrary data.
    EchoRequest(Vec<u8>),
    /// OFPT_ECHO_REPLY with the request's data.
    EchoReply(Vec<u8>),
    /// OFPT_EXPERIMENTER.
    Experimenter(ExperimenterMsg),
    /// OFPT_FEATURES_REQUEST.
    FeaturesRequest,
    /// OFPT_FEATURES_REPLY.
    FeaturesReply(SwitchFeatures),
    /// OFPT_GET_CONFIG_REQUEST.
    GetConfigRequest,
    /// OFPT_GET_CONFIG_REPLY.
    GetConfigReply(SwitchConfig),
    /// OFPT_SET_CONFIG.
    SetConfig(SwitchConfig),
    /// OFPT_PACKET_IN.
    PacketIn(PacketIn),
    /// OFPT_FLOW_REMOVED.
    FlowRemoved(FlowRemoved),
    /// OFPT_PORT_STATUS.
    PortStatus(PortStatus),
    /// OFPT_PACKET_OUT.
    PacketOut(PacketOut),
    /// OFPT_FLOW_MOD.
    FlowMod(FlowMod),
    /// OFPT_GROUP_MOD.
    GroupMod(GroupMod),
    /// OFPT_PORT_MOD.
    PortMod(PortMod),
    /// OFPT_TABLE_MOD.
    TableMod(TableMod),
    /// OFPT_MULTIPART_REQUEST.
    MultipartRequest(MultipartRequest),
    /// OFPT_MULTIPART_REPLY.
    MultipartReply(MultipartReply),
    /// OFPT_BARRIER_REQUEST.
    BarrierRequest,
    /// OFPT_BARRIER_REPLY.
    BarrierReply,
    /// OFPT_QUEUE_GET_CONFIG_REQUEST for a port.
    QueueGetConfigRequest(u32),
    /// OFPT_QUEUE_GET_CONFIG_REPLY.
    QueueGetConfigReply(QueueGetConfigReply),
    /// OFPT_ROLE_REQUEST.
    RoleRequest(RoleMsg),
    /// OFPT_ROLE_REPLY.
    RoleReply(RoleMsg),
    /// OFPT_GET_ASYNC_REQUEST.
    GetAsyncRequest,
    /// OFPT_GET_ASYNC_REPLY.
    GetAsyncReply(AsyncConfig),
    /// OFPT_SET_ASYNC.
    SetAsync(AsyncConfig),
    /// OFPT_METER_MOD.
    MeterMod(MeterMod),
}

impl Message {
    /// The `OFPT_*` type.
    pub fn msg_type(&self) -> u8 {
        use Message as M;
        match self {
            M::Hello(_) => OFPT_HELLO,
            M::Error(_) => OFPT_ERROR,
            M::EchoRequest(_) => OFPT_ECHO_REQUEST,
            M::EchoReply(_) => OFPT_ECHO_REPLY,
            M::Experimenter(_) => OFPT_EXPERIMENTER,
            M::FeaturesRequest => OFPT_FEATURES_REQUEST,
            M::FeaturesReply(_) => OFPT_FEATURES_REPLY,
            M::GetConfigRequest => OFPT_GET_CONFIG_REQUEST,
            M::GetConfigReply(_) => OFPT_GET_CONFIG_REPLY,
            M::SetConfig(_) => OFPT_SET_CONFIG,
            M::PacketIn(_) => OFPT_PACKET_IN,
            M::FlowRemoved(_) => OFPT_FLOW_REMOVED,
            M::PortStatus(_) => OFPT_PORT_STATUS,
            M::PacketOut(_) => OFPT_PACKET_OUT,
            M::FlowMod(_) => OFPT_FLOW_MOD,
            M::GroupMod(_) => OFPT_GROUP_MOD,
            M::PortMod(_) => OFPT_PORT_MOD,
            M::TableMod(_) => OFPT_TABLE_MOD,
            M::MultipartRequest(_) => OFPT_MULTIPART_REQUEST,
            M::MultipartReply(_) => OFPT_MULTIPART_REPLY,
            M::BarrierRequest => OFPT_BARRIER_REQUEST,
            M::BarrierReply => OFPT_BARRIER_REPLY,
            M::QueueGetConfigRequest(_) => OFPT_QUEUE_GET_CONFIG_REQUEST,
            M::QueueGetConfigReply(_) => OFPT_QUEUE_GET_CONFIG_REPLY,
            M::RoleRequest(_) => OFPT_ROLE_REQUEST,
            M::RoleReply(_) => OFPT_ROLE_REPLY,
            M::GetAsyncRequest => OFPT_GET_ASYNC_REQUEST,
            M::GetAsyncReply(_) => OFPT_GET_ASYNC_REPLY,
            M::SetAsync(_) => OFPT_SET_ASYNC,
            M::MeterMod(_) => OFPT_METER_MOD,
        }
    }

    /// The version written in the header: the HELLO's own version, else 1.3.
    pub fn version(&self) -> u8 {
        match self {
            Message::Hello(h) => h.version,
            _ => OFP_VERSION,
        }
    }

    /// Decode a body of type `msg_type` (the bytes after the header).
    #[inline]
    fn decode_body(version: u8, msg_type: u8, b: &[u8]) -> Result<Self, Fail> {
        use Message as M;
        let empty = |m: Message| exact(b, 0).map(|_| m);
        Ok(match msg_type {
            OFPT_HELLO => M::Hello(Hello::decode(version, b)?),
            OFPT_ERROR => M::Error(ErrorMsg::decode(b)?),
            OFPT_ECHO_REQUEST => M::EchoRequest(b.to_vec()),
            OFPT_ECHO_REPLY => M::EchoReply(b.to_vec()),
            OFPT_EXPERIMENTER => M::Experimenter(ExperimenterMsg::decode(b)?),
            OFPT_FEATURES_REQUEST => empty(M::FeaturesRequest)?,
            OFPT_FEATURES_REPLY => M::FeaturesReply(SwitchFeatures::decode(b)?),
            OFPT_GET_CONFIG_REQUEST => empty(M::GetConfigRequest)?,
            OFPT_GET_CONFIG_REPLY => M::GetConfigReply(SwitchConfig::decode(b)?),
            OFPT_SET_CONFIG => M::SetConfig(SwitchConfig::decode(b)?),
            OFPT_PACKET_IN => M::PacketIn(PacketIn::decode(b)?),
            OFPT_FLOW_REMOVED => M::FlowRemoved(FlowRemoved::decode(b)?),
            OFPT_PORT_STATUS => M::PortStatus(PortStatus::decode(b)?),
            OFPT_PACKET_OUT => M::PacketOut(PacketOut::decode(b)?),
            OFPT_FLOW_MOD => M::FlowMod(FlowMod::decode(b)?),
            OFPT_GROUP_MOD => M::GroupMod(GroupMod::decode(b)?),
            OFPT_PORT_MOD => M::PortMod(PortMod::decode(b)?),
            OFPT_TABLE_MOD => M::TableMod(TableMod::decode(b)?),
            OFPT_MULTIPART_REQUEST => M::MultipartRequest(MultipartRequest::decode(b)?),
            OFPT_MULTIPART_REPLY => M::MultipartReply(MultipartReply::decode(b)?),
            OFPT_BARRIER_REQUEST => empty(M::BarrierRequest)?,
            OFPT_BARRIER_REPLY => empty(M::BarrierReply)?,
            OFPT_QUEUE_GET_CONFIG_REQUEST => M::QueueGetConfigRequest(decode_port_pad(b)?),
            OFPT_QUEUE_GET_CONFIG_REPLY => M::QueueGetConfigReply(QueueGetConfigReply::decode(b)?),
            OFPT_ROLE_REQUEST => M::RoleRequest(RoleMsg::decode(b)?),
            OFPT_ROLE_REPLY => M::RoleReply(RoleMsg::decode(b)?),
            OFPT_GET_ASYNC_REQUEST => empty(M::GetAsyncRequest)?,
            OFPT_GET_ASYNC_REPLY => M::GetAsyncReply(AsyncConfig::decode(b)?),
            OFPT_SET_ASYNC => M::SetAsync(AsyncConfig::decode(b)?),
            OFPT_METER_MOD => M::MeterMod(MeterMod::decode(b)?),
            _ => return Err(Fail::new(ErrorCode::BAD_TYPE, "unknown message type")),
        })
    }

    fn encode_body(&self, buf: &mut BytesMut) {
        use Message as M;
        match self {
            M::Hello(h) => h.encode(buf),
            M::Error(e) => e.encode(buf),
            M::EchoRequest(d) | M::EchoReply(d) => buf.put_slice(d),
            M::Experimenter(e) => e.encode(buf),
            M::FeaturesRequest
            | M::GetConfigRequest
            | M::BarrierRequest
            | M::BarrierReply
            | M::GetAsyncRequest => {}
            M::FeaturesReply(f) => f.encode(buf),
            M::GetConfigReply(c) | M::SetConfig(c) => c.encode(buf),
            M::PacketIn(p) => p.encode(buf),
            M::FlowRemoved(f) => f.encode(buf),
            M::PortStatus(p) => p.encode(buf),
            M::PacketOut(p) => p.encode(buf),
            M::FlowMod(f) => f.encode(buf),
            M::GroupMod(g) => g.encode(buf),
            M::PortMod(p) => p.encode(buf),
            M::TableMod(t) => t.encode(buf),
            M::MultipartRequest(m) => m.encode(buf),
            M::MultipartReply(m) => m.encode(buf),
            M::QueueGetConfigRequest(p) => encode_port_pad(*p, buf),
            M::QueueGetConfigReply(q) => q.encode(buf),
            M::RoleRequest(r) | M::RoleReply(r) => r.encode(buf),
            M::GetAsyncReply(a) | M::SetAsync(a) => a.encode(buf),
            M::MeterMod(m) => m.encode(buf),
        }
    }

    /// Append this message, with header and `xid`, to `buf`.
    ///
    /// Fails (leaving `buf` unchanged) when the message would exceed 65535
    /// bytes, e.g. a PACKET_OUT carrying a huge frame.
    pub fn encode(&self, xid: u32, buf: &mut BytesMut) -> Result<(), EncodeError> {
        encode(self, xid, buf)
    }

    /// Encode into a fresh vector.
    pub fn to_bytes(&self, xid: u32) -> Result<Vec<u8>, EncodeError> {
        let mut b = BytesMut::with_capacity(64);
        encode(self, xid, &mut b)?;
        Ok(b.to_vec())
    }
}

/// A decoded message with its transaction id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Transaction id from the header (replies must echo the request's).
    pub xid: u32,
    /// The message.
    pub message: Message,
}

impl Frame {
    /// Append the encoded frame to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        encode(&self.message, self.xid, buf)
    }
}

/// Maximum size of one message on the wire (the header length is 16 bits).
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// A stream decoder with a configurable maximum message length.
///
/// Decoding is stateless: pass the bytes received so far, consume `used`
/// bytes on success, and call again. See [`Decoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    max_len: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            max_len: MAX_MESSAGE_LEN,
        }
    }
}

impl Decoder {
    /// A decoder accepting messages up to 65535 bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reject messages whose header length exceeds `max` (before waiting for
    /// their bytes).
    pub fn max_message_len(mut self, max: usize) -> Self {
        self.max_len = max.clamp(OFP_HEADER_LEN, MAX_MESSAGE_LEN);
        self
    }

    /// Decode one message from the front of `buf`.
    ///
    /// - `Ok(Some((frame, used)))`: a message; drop `used` bytes from the front.
    /// - `Ok(None)`: `buf` holds only part of a message; read more bytes.
    /// - `Err(e)`: the first message is malformed. Answer with
    ///   [`DecodeError::reply`], then skip `e.frame_len` bytes and go on, or
    ///   close the connection when `frame_len` is `None`.
    ///
    /// Never panics, and allocates only in proportion to the bytes of the
    /// message actually present in `buf`.
    pub fn decode(&self, buf: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
        let Some(h) = Header::parse(buf) else {
            return Ok(None);
        };
        let len = usize::from(h.length);
        let err = |f: Fail, frame_len: Option<usize>| DecodeError {
            code: f.code,
            what: f.what,
            xid: Some(h.xid),
            msg_type: Some(h.msg_type),
            frame_len,
        };
        if len < OFP_HEADER_LEN {
            return Err(err(bad_len("header length below 8"), None));
        }
        if len > self.max_len {
            return Err(err(
                bad_len("header length above the configured maximum"),
                Some(len),
            ));
        }
        let Some(body) = buf.get(OFP_HEADER_LEN..len) else {
            return Ok(None);
        };
        if h.version != OFP_VERSION && h.msg_type != OFPT_HELLO {
            return Err(err(
                Fail::new(ErrorCode::BAD_VERSION, "unsupported OpenFlow version"),
                Some(len),
            ));
        }
        match Message::decode_body(h.version, h.msg_type, body) {
            Ok(message) => Ok(Some((
                Frame {
                    xid: h.xid,
                    message,
                },
                len,
            ))),
            Err(f) => Err(err(f, Some(len))),
        }
    }
}

/// Decode one message from the front of `buf` with the default [`Decoder`].
///
/// ```
/// use daolinet_openflow::{decode, Message};
/// let bytes = [0x04, 0x02, 0x00, 0x0a, 0, 0, 0, 7, 0xde, 0xad];
/// let (frame, used) = decode(&bytes).unwrap().unwrap();
/// assert_eq!(used, 10);
/// assert_eq!(frame.xid, 7);
/// assert_eq!(frame.message, Message::EchoRequest(vec![0xde, 0xad]));
/// // A partial message asks for more bytes.
/// assert!(decode(&bytes[..9]).unwrap().is_none());
/// ```
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
    Decoder::new().decode(buf)
}

/// Append `msg` with header and `xid` to `buf`.
///
/// Fails, leaving `buf` as it was, when the message would exceed 65535 bytes.
pub fn encode(msg: &Message, xid: u32, buf: &mut BytesMut) -> Result<(), EncodeError> {
    crate::emit::message(buf, msg.version(), msg.msg_type(), xid, |buf| {
        msg.encode_body(buf);
        Ok::<(), EncodeError>(())
    })
}
