//! Actions (`ofp_action_*`).

use bytes::{BufMut, BytesMut};

use crate::consts::*;
use crate::error::{ErrorCode, Fail};
use crate::oxm::{OxmField, RawOxm};
use crate::wire::{make_room, pad8, pad_to_8, patch_len, push_in_place, zeros, Reader};

/// OFPAT_OUTPUT.
pub const OFPAT_OUTPUT: u16 = 0;
/// OFPAT_COPY_TTL_OUT.
pub const OFPAT_COPY_TTL_OUT: u16 = 11;
/// OFPAT_COPY_TTL_IN.
pub const OFPAT_COPY_TTL_IN: u16 = 12;
/// OFPAT_SET_MPLS_TTL.
pub const OFPAT_SET_MPLS_TTL: u16 = 15;
/// OFPAT_DEC_MPLS_TTL.
pub const OFPAT_DEC_MPLS_TTL: u16 = 16;
/// OFPAT_PUSH_VLAN.
pub const OFPAT_PUSH_VLAN: u16 = 17;
/// OFPAT_POP_VLAN.
pub const OFPAT_POP_VLAN: u16 = 18;
/// OFPAT_PUSH_MPLS.
pub const OFPAT_PUSH_MPLS: u16 = 19;
/// OFPAT_POP_MPLS.
pub const OFPAT_POP_MPLS: u16 = 20;
/// OFPAT_SET_QUEUE.
pub const OFPAT_SET_QUEUE: u16 = 21;
/// OFPAT_GROUP.
pub const OFPAT_GROUP: u16 = 22;
/// OFPAT_SET_NW_TTL.
pub const OFPAT_SET_NW_TTL: u16 = 23;
/// OFPAT_DEC_NW_TTL.
pub const OFPAT_DEC_NW_TTL: u16 = 24;
/// OFPAT_SET_FIELD.
pub const OFPAT_SET_FIELD: u16 = 25;
/// OFPAT_PUSH_PBB.
pub const OFPAT_PUSH_PBB: u16 = 26;
/// OFPAT_POP_PBB.
pub const OFPAT_POP_PBB: u16 = 27;
/// OFPAT_EXPERIMENTER.
pub const OFPAT_EXPERIMENTER: u16 = 0xffff;

/// One action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Output to a port; `max_len` is the number of bytes sent to the
    /// controller when `port` is OFPP_CONTROLLER.
    Output {
        /// Output port.
        port: u32,
        /// Max bytes to send to the controller.
        max_len: u16,
    },
    /// Copy TTL "outwards".
    CopyTtlOut,
    /// Copy TTL "inwards".
    CopyTtlIn,
    /// Set the MPLS TTL.
    SetMplsTtl(u8),
    /// Decrement the MPLS TTL.
    DecMplsTtl,
    /// Push a VLAN tag with this EtherType.
    PushVlan(u16),
    /// Pop the outer VLAN tag.
    PopVlan,
    /// Push an MPLS label with this EtherType.
    PushMpls(u16),
    /// Pop the outer MPLS label; the argument is the new EtherType.
    PopMpls(u16),
    /// Set the queue id for output.
    SetQueue(u32),
    /// Apply a group.
    Group(u32),
    /// Set the IP TTL.
    SetNwTtl(u8),
    /// Decrement the IP TTL.
    DecNwTtl,
    /// Set a header field (the OXM field carries the new value).
    SetField(OxmField),
    /// Push a PBB service tag with this EtherType.
    PushPbb(u16),
    /// Pop the outer PBB service tag.
    PopPbb,
    /// An experimenter action, kept raw (`data` excludes the experimenter id).
    Experimenter {
        /// Experimenter id (e.g. 0x00002320 for Nicira).
        experimenter: u32,
        /// The bytes after the experimenter id, padding included.
        data: Vec<u8>,
    },
    /// An action type this crate does not know, kept raw.
    Unknown {
        /// The action type.
        action_type: u16,
        /// The bytes after the 4-byte type/length header.
        data: Vec<u8>,
    },
}

impl Action {
    /// `output:PORT` (max_len 0, or OFPCML_NO_BUFFER toward the controller).
    pub fn output(port: u32) -> Self {
        let max_len = if port == OFPP_CONTROLLER {
            OFPCML_NO_BUFFER
        } else {
            0
        };
        Action::Output { port, max_len }
    }

    /// Send the packet to the controller with at most `max_len` bytes.
    pub fn controller(max_len: u16) -> Self {
        Action::Output {
            port: OFPP_CONTROLLER,
            max_len,
        }
    }

    /// `set_field` for any exact-value field.
    pub fn set_field(f: OxmField) -> Self {
        Action::SetField(f)
    }

    /// Encode the action.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        let simple = |buf: &mut BytesMut, t: u16| {
            buf.put_u16(t);
            buf.put_u16(8);
            buf.put_u32(0);
        };
        match self {
            Action::Output { port, max_len } => {
                buf.put_u16(OFPAT_OUTPUT);
                buf.put_u16(16);
                buf.put_u32(*port);
                buf.put_u16(*max_len);
                zeros(buf, 6);
            }
            Action::CopyTtlOut => simple(buf, OFPAT_COPY_TTL_OUT),
            Action::CopyTtlIn => simple(buf, OFPAT_COPY_TTL_IN),
            Action::DecMplsTtl => simple(buf, OFPAT_DEC_MPLS_TTL),
            Action::PopVlan => simple(buf, OFPAT_POP_VLAN),
            Action::DecNwTtl => simple(buf, OFPAT_DEC_NW_TTL),
            Action::PopPbb => simple(buf, OFPAT_POP_PBB),
            Action::SetMplsTtl(t) | Action::SetNwTtl(t) => {
                let ty = if matches!(self, Action::SetMplsTtl(_)) {
                    OFPAT_SET_MPLS_TTL
                } else {
                    OFPAT_SET_NW_TTL
                };
                buf.put_u16(ty);
                buf.put_u16(8);
                buf.put_u8(*t);
                zeros(buf, 3);
            }
            Action::PushVlan(e) | Action::PushMpls(e) | Action::PopMpls(e) | Action::PushPbb(e) => {
                let ty = match self {
                    Action::PushVlan(_) => OFPAT_PUSH_VLAN,
                    Action::PushMpls(_) => OFPAT_PUSH_MPLS,
                    Action::PopMpls(_) => OFPAT_POP_MPLS,
                    _ => OFPAT_PUSH_PBB,
                };
                buf.put_u16(ty);
                buf.put_u16(8);
                buf.put_u16(*e);
                zeros(buf, 2);
            }
            Action::SetQueue(v) | Action::Group(v) => {
                let ty = if matches!(self, Action::SetQueue(_)) {
                    OFPAT_SET_QUEUE
                } else {
                    OFPAT_GROUP
                };
                buf.put_u16(ty);
                buf.put_u16(8);
                buf.put_u32(*v);
            }
            Action::SetField(f) => {
                buf.put_u16(OFPAT_SET_FIELD);
                buf.put_u16(0);
                f.encode(buf);
                pad_to_8(buf, start);
                patch_len(buf, start + 2, start);
            }
            Action::Experimenter { experimenter, data } => {
                buf.put_u16(OFPAT_EXPERIMENTER);
                buf.put_u16(0);
                buf.put_u32(*experimenter);
                buf.put_slice(data);
                pad_to_8(buf, start);
                patch_len(buf, start + 2, start);
            }
            Action::Unknown { action_type, data } => {
                buf.put_u16(*action_type);
                buf.put_u16(0);
                buf.put_slice(data);
                pad_to_8(buf, start);
                patch_len(buf, start + 2, start);
            }
        }
    }

    /// Decode one action from `r` and push it onto `out`, which must have
    /// room ([`make_room`]).
    ///
    /// Every arm pushes its own value so that the action is built in place
    /// in the vector rather than on the stack and then moved (see
    /// [`OxmField::push_basic`]).
    #[inline]
    pub(crate) fn decode_into(r: &mut Reader<'_>, out: &mut Vec<Action>) -> Result<(), Fail> {
        let bad_len = Fail::new(ErrorCode::BAD_ACTION_LEN, "action length invalid");
        let ty = r.u16().map_err(|_| bad_len)?;
        let len = usize::from(r.u16().map_err(|_| bad_len)?);
        if len < 8 || !len.is_multiple_of(8) {
            return Err(bad_len);
        }
        let body = r.bytes(len - 4).map_err(|_| bad_len)?;
        let mut b = Reader::new(body, bad_len);
        let exact = |want: usize| if len == want { Ok(()) } else { Err(bad_len) };
        match ty {
            OFPAT_OUTPUT => {
                exact(16)?;
                let port = b.u32()?;
                let max_len = b.u16()?;
                push_in_place(out, Action::Output { port, max_len });
            }
            OFPAT_COPY_TTL_OUT => exact(8).map(|_| push_in_place(out, Action::CopyTtlOut))?,
            OFPAT_COPY_TTL_IN => exact(8).map(|_| push_in_place(out, Action::CopyTtlIn))?,
            OFPAT_DEC_MPLS_TTL => exact(8).map(|_| push_in_place(out, Action::DecMplsTtl))?,
            OFPAT_POP_VLAN => exact(8).map(|_| push_in_place(out, Action::PopVlan))?,
            OFPAT_DEC_NW_TTL => exact(8).map(|_| push_in_place(out, Action::DecNwTtl))?,
            OFPAT_POP_PBB => exact(8).map(|_| push_in_place(out, Action::PopPbb))?,
            OFPAT_SET_MPLS_TTL => {
                exact(8)?;
                let x = b.u8()?;
                push_in_place(out, Action::SetMplsTtl(x));
            }
            OFPAT_SET_NW_TTL => {
                exact(8)?;
                let x = b.u8()?;
                push_in_place(out, Action::SetNwTtl(x));
            }
            OFPAT_PUSH_VLAN => {
                exact(8)?;
                let x = b.u16()?;
                push_in_place(out, Action::PushVlan(x));
            }
            OFPAT_PUSH_MPLS => {
                exact(8)?;
                let x = b.u16()?;
                push_in_place(out, Action::PushMpls(x));
            }
            OFPAT_POP_MPLS => {
                exact(8)?;
                let x = b.u16()?;
                push_in_place(out, Action::PopMpls(x));
            }
            OFPAT_PUSH_PBB => {
                exact(8)?;
                let x = b.u16()?;
                push_in_place(out, Action::PushPbb(x));
            }
            OFPAT_SET_QUEUE => {
                exact(8)?;
                let x = b.u32()?;
                push_in_place(out, Action::SetQueue(x));
            }
            OFPAT_GROUP => {
                exact(8)?;
                let x = b.u32()?;
                push_in_place(out, Action::Group(x));
            }
            OFPAT_SET_FIELD => {
                let set_len = Fail::new(
                    ErrorCode::BAD_SET_LEN,
                    "set_field OXM length does not fit the action",
                );
                // The OXM (4-byte header + payload) plus padding must fill
                // the action exactly.
                let Some((hdr, rest)) = body.split_first_chunk::<4>() else {
                    return Err(set_len);
                };
                let hdr = u32::from_be_bytes(*hdr);
                let plen = (hdr & 0xff) as usize;
                if pad8(4 + 4 + plen) != len {
                    return Err(set_len);
                }
                let payload = rest.get(..plen).ok_or(set_len)?;
                let class = (hdr >> 16) as u16;
                let field = ((hdr >> 9) & 0x7f) as u8;
                let has_mask = (hdr >> 8) & 1 == 1;
                if class != OFPXMC_OPENFLOW_BASIC
                    || !OxmField::push_basic(
                        field,
                        has_mask,
                        payload,
                        set_len,
                        out,
                        Action::SetField,
                    )?
                {
                    push_in_place(
                        out,
                        Action::SetField(OxmField::Raw(RawOxm {
                            class,
                            field,
                            has_mask,
                            payload: payload.to_vec(),
                        })),
                    );
                }
            }
            OFPAT_EXPERIMENTER => {
                let experimenter = b.u32()?;
                out.push(Action::Experimenter {
                    experimenter,
                    data: b.rest().to_vec(),
                });
            }
            _ => out.push(Action::Unknown {
                action_type: ty,
                data: body.to_vec(),
            }),
        }
        Ok(())
    }
}

/// Decode a list of actions filling `buf` exactly.
#[inline]
pub(crate) fn decode_actions(buf: &[u8]) -> Result<Vec<Action>, Fail> {
    let mut r = Reader::new(
        buf,
        Fail::new(ErrorCode::BAD_ACTION_LEN, "action list truncated"),
    );
    // Every action is at least 8 bytes; most DaoliNet actions are 16.
    let mut v = Vec::with_capacity(buf.len() / 16 + 1);
    while !r.is_empty() {
        make_room(&mut v);
        Action::decode_into(&mut r, &mut v)?;
    }
    Ok(v)
}

/// Encode a list of actions.
pub(crate) fn encode_actions(actions: &[Action], buf: &mut BytesMut) {
    for a in actions {
        a.encode(buf);
    }
}
