//! Zero-copy emitters: write a FLOW_MOD or a PACKET_OUT straight into an
//! output buffer from borrowed parts, without building a [`Message`] first.
//!
//! A controller answering PACKET_INs encodes a few messages per decision.
//! Building [`FlowMod`]/[`PacketOut`] values for that means vectors of
//! fields, instructions and actions, and copying the frame, only to encode
//! them at once. Here the caller hands over the fixed part by reference and
//! writes the OXM fields and actions one by one through a writer, from
//! whatever representation it keeps; the bytes are exactly those [`encode`]
//! gives for the equivalent message (the codec's own encoders are built on
//! the same pieces, so the wire layouts live in this module once).
//!
//! ```
//! use bytes::BytesMut;
//! use daolinet_openflow::emit::{self, FlowModHead};
//! use daolinet_openflow::*;
//!
//! let head = FlowModHead { priority: 100, idle_timeout: 10, ..FlowModHead::default() };
//! let mut out = BytesMut::new();
//! emit::flow_mod::<EncodeError>(
//!     &mut out,
//!     7,
//!     &head,
//!     |m| {
//!         m.field(&OxmField::InPort(1, None));
//!         Ok(())
//!     },
//!     |a| {
//!         a.action(&Action::output(2));
//!         Ok(())
//!     },
//! )?;
//! let fm = FlowMod::add(Match::new().in_port(1))
//!     .priority(100)
//!     .idle_timeout(10)
//!     .apply(vec![Action::output(2)]);
//! let mut via_codec = BytesMut::new();
//! encode(&Message::FlowMod(fm), 7, &mut via_codec)?;
//! assert_eq!(out, via_codec);
//! # Ok::<(), EncodeError>(())
//! ```
//!
//! [`Message`]: crate::Message
//! [`FlowMod`]: crate::FlowMod
//! [`PacketOut`]: crate::PacketOut
//! [`encode`]: crate::encode

use bytes::{BufMut, BytesMut};

use crate::action::Action;
use crate::consts::{
    OFPFC_ADD, OFPG_ANY, OFPP_ANY, OFPT_FLOW_MOD, OFPT_PACKET_OUT, OFP_DEFAULT_PRIORITY,
    OFP_NO_BUFFER, OFP_VERSION,
};
use crate::error::EncodeError;
use crate::instruction::OFPIT_APPLY_ACTIONS;
use crate::message::MAX_MESSAGE_LEN;
use crate::oxm::OxmField;
use crate::wire::{pad8, patch_len, patch_u16, zeros};

/// `OFPMT_OXM`, the only match type of OpenFlow 1.3.
const OFPMT_OXM: u16 = 1;

/// The fixed part of a FLOW_MOD: every field before its match. The default
/// is an `OFPFC_ADD` of an unbuffered packet, like [`crate::FlowMod::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowModHead {
    /// Opaque controller cookie.
    pub cookie: u64,
    /// Cookie mask (modify/delete only).
    pub cookie_mask: u64,
    /// Table id.
    pub table_id: u8,
    /// `OFPFC_*` command.
    pub command: u8,
    /// Idle timeout, seconds (0: none).
    pub idle_timeout: u16,
    /// Hard timeout, seconds (0: none).
    pub hard_timeout: u16,
    /// Priority.
    pub priority: u16,
    /// Buffer id, or `OFP_NO_BUFFER`.
    pub buffer_id: u32,
    /// Output port filter (delete only), or `OFPP_ANY`.
    pub out_port: u32,
    /// Output group filter (delete only), or `OFPG_ANY`.
    pub out_group: u32,
    /// `OFPFF_*` flags.
    pub flags: u16,
}

impl Default for FlowModHead {
    fn default() -> Self {
        FlowModHead {
            cookie: 0,
            cookie_mask: 0,
            table_id: 0,
            command: OFPFC_ADD,
            idle_timeout: 0,
            hard_timeout: 0,
            priority: OFP_DEFAULT_PRIORITY,
            buffer_id: OFP_NO_BUFFER,
            out_port: OFPP_ANY,
            out_group: OFPG_ANY,
            flags: 0,
        }
    }
}

impl FlowModHead {
    /// Appends the 40 bytes of `ofp_flow_mod` between the header and the
    /// match (built on the stack and appended at once: one capacity check
    /// instead of one per field).
    #[inline]
    pub(crate) fn put(&self, buf: &mut BytesMut) {
        let mut b = [0u8; 40];
        b[0..8].copy_from_slice(&self.cookie.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie_mask.to_be_bytes());
        b[16] = self.table_id;
        b[17] = self.command;
        b[18..20].copy_from_slice(&self.idle_timeout.to_be_bytes());
        b[20..22].copy_from_slice(&self.hard_timeout.to_be_bytes());
        b[22..24].copy_from_slice(&self.priority.to_be_bytes());
        b[24..28].copy_from_slice(&self.buffer_id.to_be_bytes());
        b[28..32].copy_from_slice(&self.out_port.to_be_bytes());
        b[32..36].copy_from_slice(&self.out_group.to_be_bytes());
        b[36..38].copy_from_slice(&self.flags.to_be_bytes());
        // b[38..40]: pad
        buf.put_slice(&b);
    }
}

/// Writes the OXM fields of a match being emitted, in the order given (the
/// caller keeps OpenFlow's prerequisite order: `eth_type` before IP fields,
/// `ip_proto` before transport ports).
#[derive(Debug)]
pub struct Fields<'a> {
    buf: &'a mut BytesMut,
}

impl Fields<'_> {
    /// Appends one OXM TLV.
    #[inline]
    pub fn field(&mut self, f: &OxmField) {
        f.encode(self.buf);
    }
}

/// Writes the actions of an action list being emitted, in order.
#[derive(Debug)]
pub struct Actions<'a> {
    buf: &'a mut BytesMut,
}

impl Actions<'_> {
    /// Appends one action.
    #[inline]
    pub fn action(&mut self, a: &Action) {
        a.encode(self.buf);
    }
}

/// Appends one message after an OpenFlow header (`version`, `msg_type`,
/// `xid`) whose length is set once `body` has written the rest. On an error
/// from `body`, or when the message exceeds 65535 bytes, `buf` is left as it
/// was.
#[inline]
pub(crate) fn message<E: From<EncodeError>>(
    buf: &mut BytesMut,
    version: u8,
    msg_type: u8,
    xid: u32,
    body: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<(), E> {
    let start = buf.len();
    let x = xid.to_be_bytes();
    // The length (bytes 2..4) is set at the end.
    buf.put_slice(&[version, msg_type, 0, 0, x[0], x[1], x[2], x[3]]);
    let r = body(buf).and_then(|()| {
        let len = buf.len() - start;
        if len > MAX_MESSAGE_LEN {
            return Err(E::from(EncodeError::TooLong {
                len,
                max: MAX_MESSAGE_LEN,
            }));
        }
        patch_u16(buf, start + 2, len);
        Ok(())
    });
    if r.is_err() {
        buf.truncate(start);
    }
    r
}

/// Appends an `ofp_match` (type OXM, length without padding, the fields
/// `fields` writes, zeros to a multiple of 8).
#[inline]
pub(crate) fn put_match<E>(
    buf: &mut BytesMut,
    fields: impl FnOnce(&mut Fields<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let start = buf.len();
    let t = OFPMT_OXM.to_be_bytes();
    buf.put_slice(&[t[0], t[1], 0, 0]);
    fields(&mut Fields { buf })?;
    let len = buf.len() - start;
    patch_u16(buf, start + 2, len);
    zeros(buf, pad8(len) - len);
    Ok(())
}

/// Appends an action-list instruction (`OFPIT_APPLY_ACTIONS` or
/// `OFPIT_WRITE_ACTIONS`) holding what `actions` writes. With
/// `omit_empty`, an instruction left without actions is taken back.
#[inline]
pub(crate) fn put_actions_instruction<E>(
    buf: &mut BytesMut,
    instruction_type: u16,
    omit_empty: bool,
    actions: impl FnOnce(&mut Actions<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let start = buf.len();
    let t = instruction_type.to_be_bytes();
    buf.put_slice(&[t[0], t[1], 0, 0, 0, 0, 0, 0]);
    actions(&mut Actions { buf })?;
    if omit_empty && buf.len() == start + 8 {
        buf.truncate(start);
    } else {
        patch_len(buf, start + 2, start);
    }
    Ok(())
}

/// Appends a PACKET_OUT body: buffer id, in_port, the action list `actions`
/// writes (with its length), then `data`.
#[inline]
pub(crate) fn put_packet_out_body<E>(
    buf: &mut BytesMut,
    buffer_id: u32,
    in_port: u32,
    actions: impl FnOnce(&mut Actions<'_>) -> Result<(), E>,
    data: &[u8],
) -> Result<(), E> {
    let len_at = buf.len() + 8;
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&buffer_id.to_be_bytes());
    b[4..8].copy_from_slice(&in_port.to_be_bytes());
    // b[8..10]: actions length, set below; b[10..16]: pad.
    buf.put_slice(&b);
    let start = buf.len();
    actions(&mut Actions { buf })?;
    patch_u16(buf, len_at, buf.len() - start);
    buf.put_slice(data);
    Ok(())
}

/// Appends a FLOW_MOD (OpenFlow 1.3, transaction id `xid`) to `buf`: `head`,
/// a match of the fields `fields` writes, and one `OFPIT_APPLY_ACTIONS`
/// instruction with the actions `actions` writes, or no instruction at all
/// when it writes none (a drop flow). The bytes are those of encoding the
/// equivalent [`crate::FlowMod`].
///
/// On an error from either writer, or when the message would exceed 65535
/// bytes ([`EncodeError::TooLong`]), `buf` is left as it was.
#[inline]
pub fn flow_mod<E: From<EncodeError>>(
    buf: &mut BytesMut,
    xid: u32,
    head: &FlowModHead,
    fields: impl FnOnce(&mut Fields<'_>) -> Result<(), E>,
    actions: impl FnOnce(&mut Actions<'_>) -> Result<(), E>,
) -> Result<(), E> {
    message(buf, OFP_VERSION, OFPT_FLOW_MOD, xid, |buf| {
        head.put(buf);
        put_match(buf, fields)?;
        put_actions_instruction(buf, OFPIT_APPLY_ACTIONS, true, actions)
    })
}

/// Appends a PACKET_OUT (OpenFlow 1.3, transaction id `xid`) to `buf`
/// sending the unbuffered frame `data` with the actions `actions` writes,
/// as if received on `in_port` (`OFPP_CONTROLLER` when it came from no
/// port). The bytes are those of encoding the equivalent
/// [`crate::PacketOut`].
///
/// On an error from the writer, or when the message would exceed 65535
/// bytes ([`EncodeError::TooLong`]), `buf` is left as it was.
#[inline]
pub fn packet_out<E: From<EncodeError>>(
    buf: &mut BytesMut,
    xid: u32,
    in_port: u32,
    actions: impl FnOnce(&mut Actions<'_>) -> Result<(), E>,
    data: &[u8],
) -> Result<(), E> {
    message(buf, OFP_VERSION, OFPT_PACKET_OUT, xid, |buf| {
        put_packet_out_body(buf, OFP_NO_BUFFER, in_port, actions, data)
    })
}
