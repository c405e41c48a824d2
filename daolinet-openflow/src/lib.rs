//! # daolinet-openflow: an OpenFlow 1.3 codec
//!
//! Sans-IO: bytes in, typed messages out, and back. No sockets, no async,
//! no panics on malformed input, byte-compatible with Open vSwitch.
//!
//! - [`decode`] / [`Decoder::decode`] take the bytes received so far and
//!   return `Ok(Some((frame, used)))`, `Ok(None)` ("need more bytes") or a
//!   [`DecodeError`] that names the OFPT_ERROR `(type, code)` to answer with
//!   and how many bytes to skip.
//! - [`encode`] / [`Message::encode`] append a message with its xid to a
//!   [`bytes::BytesMut`].
//! - [`Match`], [`OxmField`], [`Instruction`], [`Action`] model flow entries;
//!   unknown-but-well-formed items (NXM fields, experimenter actions, unknown
//!   multipart types...) are kept raw and re-encoded byte for byte.
//! - [`emit`]: a FLOW_MOD or PACKET_OUT written straight into the output
//!   buffer from borrowed parts (no message built first), for hot paths.
//! - [`flow_syntax`]: `Display` and parsers for an ovs-ofctl-like flow syntax
//!   (`in_port=2,ip,nw_src=10.0.0.1 actions=set_field:...,output:3`).
//!
//! ## Example: a controller loop step
//!
//! ```
//! use bytes::BytesMut;
//! use daolinet_openflow::*;
//!
//! // Build a FLOW_MOD from code...
//! let fm = FlowMod::add(
//!     Match::new().in_port(1).eth_type(0x0800).ipv4_dst("10.0.0.2".parse().unwrap()),
//! )
//! .priority(100)
//! .idle_timeout(10)
//! .apply(vec![Action::output(2)]);
//! // ...or from the flow syntax.
//! let parsed: FlowMod = "priority=100,idle_timeout=10,in_port=1,ip,nw_dst=10.0.0.2 actions=output:2"
//!     .parse()
//!     .unwrap();
//! assert_eq!(fm, parsed);
//!
//! let mut wire = BytesMut::new();
//! encode(&Message::FlowMod(fm.clone()), 42, &mut wire).unwrap();
//! encode(&Message::BarrierRequest, 43, &mut wire).unwrap();
//!
//! // Decode a stream: loop until Ok(None).
//! let mut input: &[u8] = &wire;
//! let mut got = Vec::new();
//! loop {
//!     match decode(input) {
//!         Ok(Some((frame, used))) => {
//!             got.push(frame);
//!             input = &input[used..];
//!         }
//!         Ok(None) => break, // need more bytes
//!         Err(e) => {
//!             // Answer with an OFPT_ERROR, then skip the bad message.
//!             let (xid, reply) = e.reply(input);
//!             let _ = (xid, reply);
//!             match e.frame_len {
//!                 Some(n) => input = &input[n..],
//!                 None => break, // cannot resynchronise: close the connection
//!             }
//!         }
//!     }
//! }
//! assert_eq!(got[0], Frame { xid: 42, message: Message::FlowMod(fm) });
//! assert_eq!(got[1].message, Message::BarrierRequest);
//! ```

pub mod action;
pub mod consts;
pub mod emit;
pub mod error;
pub mod ext;
pub mod flow_syntax;
pub mod header;
pub mod instruction;
pub mod message;
pub mod multipart;
pub mod oxm;
mod wire;

pub use action::Action;
pub use consts::*;
pub use error::{DecodeError, EncodeError, ErrorCode};
pub use flow_syntax::FlowParseError;
pub use header::Header;
pub use instruction::Instruction;
pub use message::basic::{
    AsyncConfig, ErrorMsg, ExperimenterMsg, Hello, HelloElement, QueueGetConfigReply, RoleMsg,
    SwitchConfig, SwitchFeatures,
};
pub use message::flow::{FlowMod, FlowRemoved, PacketIn, PacketOut};
pub use message::group::{Bucket, GroupMod, MeterBand, MeterMod};
pub use message::port::{Port, PortMod, PortStatus, TableMod};
pub use message::{decode, encode, Decoder, Frame, Message, MAX_MESSAGE_LEN};
pub use multipart::{
    AggregateStats, Counters, Desc, FlowStats, FlowStatsRequest, GroupDesc, GroupFeatures,
    GroupStats, MeterConfig, MeterFeatures, MeterStats, MultipartReply, MultipartReplyBody,
    MultipartRequest, MultipartRequestBody, PortStats, QueueStats, TableFeatureProp, TableFeatures,
    TableStats,
};
pub use oxm::{MacAddr, Match, OxmField, RawOxm};
