//! Instructions (`ofp_instruction_*`).

use std::convert::Infallible;

use bytes::{BufMut, BytesMut};

use crate::action::{decode_actions, Action};
use crate::emit::put_actions_instruction;
use crate::error::{ErrorCode, Fail};
use crate::wire::{make_room, pad_to_8, patch_len, push_in_place, zeros, Reader};

/// OFPIT_GOTO_TABLE.
pub const OFPIT_GOTO_TABLE: u16 = 1;
/// OFPIT_WRITE_METADATA.
pub const OFPIT_WRITE_METADATA: u16 = 2;
/// OFPIT_WRITE_ACTIONS.
pub const OFPIT_WRITE_ACTIONS: u16 = 3;
/// OFPIT_APPLY_ACTIONS.
pub const OFPIT_APPLY_ACTIONS: u16 = 4;
/// OFPIT_CLEAR_ACTIONS.
pub const OFPIT_CLEAR_ACTIONS: u16 = 5;
/// OFPIT_METER.
pub const OFPIT_METER: u16 = 6;
/// OFPIT_EXPERIMENTER.
pub const OFPIT_EXPERIMENTER: u16 = 0xffff;

/// One instruction of a flow entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Instruction {
    /// Continue processing in another table.
    GotoTable(u8),
    /// Write the metadata register under a mask.
    WriteMetadata {
        /// New metadata bits.
        metadata: u64,
        /// Which bits to write.
        mask: u64,
    },
    /// Merge these actions into the action set.
    WriteActions(Vec<Action>),
    /// Apply these actions now.
    ApplyActions(Vec<Action>),
    /// Clear the action set.
    ClearActions,
    /// Apply a meter.
    Meter(u32),
    /// Experimenter instruction, kept raw.
    Experimenter {
        /// Experimenter id.
        experimenter: u32,
        /// The bytes after the experimenter id.
        data: Vec<u8>,
    },
    /// Unknown instruction type, kept raw.
    Unknown {
        /// Instruction type.
        instruction_type: u16,
        /// The bytes after the 4-byte header.
        data: Vec<u8>,
    },
}

impl Instruction {
    /// `apply_actions` with these actions.
    pub fn apply(actions: Vec<Action>) -> Self {
        Instruction::ApplyActions(actions)
    }

    /// Encode the instruction.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        match self {
            Instruction::GotoTable(t) => {
                buf.put_u16(OFPIT_GOTO_TABLE);
                buf.put_u16(8);
                buf.put_u8(*t);
                zeros(buf, 3);
            }
            Instruction::WriteMetadata { metadata, mask } => {
                buf.put_u16(OFPIT_WRITE_METADATA);
                buf.put_u16(24);
                zeros(buf, 4);
                buf.put_u64(*metadata);
                buf.put_u64(*mask);
            }
            Instruction::WriteActions(a) | Instruction::ApplyActions(a) => {
                let ty = if matches!(self, Instruction::WriteActions(_)) {
                    OFPIT_WRITE_ACTIONS
                } else {
                    OFPIT_APPLY_ACTIONS
                };
                let Ok(()) = put_actions_instruction::<Infallible>(buf, ty, false, |w| {
                    for x in a {
                        w.action(x);
                    }
                    Ok(())
                });
            }
            Instruction::ClearActions => {
                buf.put_u16(OFPIT_CLEAR_ACTIONS);
                buf.put_u16(8);
                zeros(buf, 4);
            }
            Instruction::Meter(m) => {
                buf.put_u16(OFPIT_METER);
                buf.put_u16(8);
                buf.put_u32(*m);
            }
            Instruction::Experimenter { experimenter, data } => {
                buf.put_u16(OFPIT_EXPERIMENTER);
                buf.put_u16(0);
                buf.put_u32(*experimenter);
                buf.put_slice(data);
                pad_to_8(buf, start);
                patch_len(buf, start + 2, start);
            }
            Instruction::Unknown {
                instruction_type,
                data,
            } => {
                buf.put_u16(*instruction_type);
                buf.put_u16(0);
                buf.put_slice(data);
                pad_to_8(buf, start);
                patch_len(buf, start + 2, start);
            }
        }
    }

    /// Decode one instruction from `r` and push it onto `out`, which must
    /// have room ([`make_room`]); built in place like actions (see
    /// [`push_in_place`]).
    #[inline]
    pub(crate) fn decode_into(r: &mut Reader<'_>, out: &mut Vec<Instruction>) -> Result<(), Fail> {
        let bad_len = Fail::new(ErrorCode::BAD_INSTRUCTION_LEN, "instruction length invalid");
        let ty = r.u16().map_err(|_| bad_len)?;
        let len = usize::from(r.u16().map_err(|_| bad_len)?);
        if len < 8 || !len.is_multiple_of(8) {
            return Err(bad_len);
        }
        let body = r.bytes(len - 4).map_err(|_| bad_len)?;
        let mut b = Reader::new(body, bad_len);
        let exact = |want: usize| if len == want { Ok(()) } else { Err(bad_len) };
        match ty {
            OFPIT_GOTO_TABLE => {
                exact(8)?;
                let t = b.u8()?;
                push_in_place(out, Instruction::GotoTable(t));
            }
            OFPIT_WRITE_METADATA => {
                exact(24)?;
                b.skip(4)?;
                let metadata = b.u64()?;
                let mask = b.u64()?;
                push_in_place(out, Instruction::WriteMetadata { metadata, mask });
            }
            OFPIT_WRITE_ACTIONS | OFPIT_APPLY_ACTIONS => {
                b.skip(4)?;
                let actions = decode_actions(b.rest())?;
                if ty == OFPIT_WRITE_ACTIONS {
                    push_in_place(out, Instruction::WriteActions(actions));
                } else {
                    push_in_place(out, Instruction::ApplyActions(actions));
                }
            }
            OFPIT_CLEAR_ACTIONS => {
                exact(8)?;
                push_in_place(out, Instruction::ClearActions);
            }
            OFPIT_METER => {
                exact(8)?;
                let m = b.u32()?;
                push_in_place(out, Instruction::Meter(m));
            }
            OFPIT_EXPERIMENTER => {
                let experimenter = b.u32()?;
                out.push(Instruction::Experimenter {
                    experimenter,
                    data: b.rest().to_vec(),
                });
            }
            _ => out.push(Instruction::Unknown {
                instruction_type: ty,
                data: body.to_vec(),
            }),
        }
        Ok(())
    }
}

/// Decode a list of instructions filling `buf` exactly.
#[inline]
pub(crate) fn decode_instructions(buf: &[u8]) -> Result<Vec<Instruction>, Fail> {
    let mut r = Reader::new(
        buf,
        Fail::new(ErrorCode::BAD_INSTRUCTION_LEN, "instruction list truncated"),
    );
    let mut v = Vec::with_capacity(2);
    while !r.is_empty() {
        make_room(&mut v);
        Instruction::decode_into(&mut r, &mut v)?;
    }
    Ok(v)
}

/// Encode a list of instructions.
pub(crate) fn encode_instructions(ins: &[Instruction], buf: &mut BytesMut) {
    for i in ins {
        i.encode(buf);
    }
}
