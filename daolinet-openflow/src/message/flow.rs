//! Flow-table messages: FLOW_MOD, FLOW_REMOVED, PACKET_IN, PACKET_OUT.

use std::convert::Infallible;

use bytes::{BufMut, BytesMut};

use crate::action::{decode_actions, Action};
use crate::consts::*;
use crate::emit::{put_packet_out_body, FlowModHead};
use crate::error::{ErrorCode, Fail};
use crate::instruction::{decode_instructions, encode_instructions, Instruction};
use crate::oxm::Match;
use crate::wire::{be16, be32, be64, zeros, Reader};

use super::bad_len;

/// FLOW_MOD body.
///
/// ```
/// use daolinet_openflow::{Action, FlowMod, Match, OFPFF_SEND_FLOW_REM};
/// let fm = FlowMod::add(Match::new().in_port(1).eth_type(0x0800))
///     .priority(100)
///     .cookie(0xd0)
///     .idle_timeout(10)
///     .flags(OFPFF_SEND_FLOW_REM)
///     .apply(vec![Action::output(2)]);
/// assert_eq!(fm.to_string(), "cookie=0xd0,priority=100,idle_timeout=10,send_flow_rem,in_port=1,ip actions=output:2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowMod {
    /// Opaque controller-issued identifier.
    pub cookie: u64,
    /// Cookie bits that must match (modify/delete); 0 ignores the cookie.
    pub cookie_mask: u64,
    /// Table id (OFPTT_ALL for delete in all tables).
    pub table_id: u8,
    /// `OFPFC_*` command.
    pub command: u8,
    /// Idle time before discarding (seconds), 0 = none.
    pub idle_timeout: u16,
    /// Max time before discarding (seconds), 0 = none.
    pub hard_timeout: u16,
    /// Priority.
    pub priority: u16,
    /// Buffered packet to apply to, or OFP_NO_BUFFER.
    pub buffer_id: u32,
    /// For delete: require matching entries to include this output port (OFPP_ANY = any).
    pub out_port: u32,
    /// For delete: require matching entries to include this group (OFPG_ANY = any).
    pub out_group: u32,
    /// `OFPFF_*` flags.
    pub flags: u16,
    /// Fields to match.
    pub match_: Match,
    /// Instructions (ignored for delete).
    pub instructions: Vec<Instruction>,
}

impl Default for FlowMod {
    fn default() -> Self {
        FlowMod {
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
            match_: Match::new(),
            instructions: Vec::new(),
        }
    }
}

impl FlowMod {
    /// An OFPFC_ADD of `m` in table 0 at the default priority, no actions (drop).
    pub fn add(m: Match) -> Self {
        FlowMod {
            match_: m,
            ..Default::default()
        }
    }

    /// An OFPFC_DELETE of every flow matching `m` in all tables.
    pub fn delete(m: Match) -> Self {
        FlowMod {
            command: OFPFC_DELETE,
            table_id: OFPTT_ALL,
            match_: m,
            ..Default::default()
        }
    }

    /// An OFPFC_DELETE_STRICT of the flow with exactly `m` and `priority`.
    pub fn delete_strict(m: Match, priority: u16) -> Self {
        FlowMod {
            command: OFPFC_DELETE_STRICT,
            priority,
            match_: m,
            ..Default::default()
        }
    }

    /// Set the command (`OFPFC_*`).
    pub fn command(mut self, c: u8) -> Self {
        self.command = c;
        self
    }
    /// Set the table.
    pub fn table(mut self, t: u8) -> Self {
        self.table_id = t;
        self
    }
    /// Set the priority.
    pub fn priority(mut self, p: u16) -> Self {
        self.priority = p;
        self
    }
    /// Set the cookie.
    pub fn cookie(mut self, c: u64) -> Self {
        self.cookie = c;
        self
    }
    /// Restrict modify/delete to flows whose cookie matches `cookie` under `mask`.
    pub fn cookie_match(mut self, cookie: u64, mask: u64) -> Self {
        self.cookie = cookie;
        self.cookie_mask = mask;
        self
    }
    /// Set the idle timeout (seconds).
    pub fn idle_timeout(mut self, s: u16) -> Self {
        self.idle_timeout = s;
        self
    }
    /// Set the hard timeout (seconds).
    pub fn hard_timeout(mut self, s: u16) -> Self {
        self.hard_timeout = s;
        self
    }
    /// Set the `OFPFF_*` flags.
    pub fn flags(mut self, f: u16) -> Self {
        self.flags = f;
        self
    }
    /// Apply to a buffered packet.
    pub fn buffer(mut self, id: u32) -> Self {
        self.buffer_id = id;
        self
    }
    /// Restrict deletes to flows that output to `port`.
    pub fn out_port(mut self, port: u32) -> Self {
        self.out_port = port;
        self
    }
    /// Append an instruction.
    pub fn instruction(mut self, i: Instruction) -> Self {
        self.instructions.push(i);
        self
    }
    /// Append an apply_actions instruction.
    pub fn apply(self, actions: Vec<Action>) -> Self {
        self.instruction(Instruction::ApplyActions(actions))
    }
    /// Append a goto_table instruction.
    pub fn goto_table(self, t: u8) -> Self {
        self.instruction(Instruction::GotoTable(t))
    }

    #[inline]
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("FLOW_MOD truncated"));
        // The fixed part in one bounds check.
        let h: [u8; 40] = r.array()?;
        let cookie = be64(&h, 0);
        let cookie_mask = be64(&h, 8);
        let table_id = h[16];
        let command = h[17];
        let idle_timeout = be16(&h, 18);
        let hard_timeout = be16(&h, 20);
        let priority = be16(&h, 22);
        let buffer_id = be32(&h, 24);
        let out_port = be32(&h, 28);
        let out_group = be32(&h, 32);
        let flags = be16(&h, 36);
        let match_ = Match::decode(&mut r)?;
        let instructions = decode_instructions(r.rest())?;
        Ok(FlowMod {
            cookie,
            cookie_mask,
            table_id,
            command,
            idle_timeout,
            hard_timeout,
            priority,
            buffer_id,
            out_port,
            out_group,
            flags,
            match_,
            instructions,
        })
    }

    /// The fixed part (everything but the match and the instructions), as
    /// [`crate::emit::flow_mod`] takes it.
    pub fn head(&self) -> FlowModHead {
        FlowModHead {
            cookie: self.cookie,
            cookie_mask: self.cookie_mask,
            table_id: self.table_id,
            command: self.command,
            idle_timeout: self.idle_timeout,
            hard_timeout: self.hard_timeout,
            priority: self.priority,
            buffer_id: self.buffer_id,
            out_port: self.out_port,
            out_group: self.out_group,
            flags: self.flags,
        }
    }

    /// A FLOW_MOD of a fixed part, a match and instructions.
    pub fn from_parts(head: FlowModHead, match_: Match, instructions: Vec<Instruction>) -> Self {
        FlowMod {
            cookie: head.cookie,
            cookie_mask: head.cookie_mask,
            table_id: head.table_id,
            command: head.command,
            idle_timeout: head.idle_timeout,
            hard_timeout: head.hard_timeout,
            priority: head.priority,
            buffer_id: head.buffer_id,
            out_port: head.out_port,
            out_group: head.out_group,
            flags: head.flags,
            match_,
            instructions,
        }
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        self.head().put(buf);
        self.match_.encode(buf);
        encode_instructions(&self.instructions, buf);
    }
}

/// PACKET_IN body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PacketIn {
    /// Buffer id, or OFP_NO_BUFFER.
    pub buffer_id: u32,
    /// Full length of the frame.
    pub total_len: u16,
    /// `OFPR_*` reason.
    pub reason: u8,
    /// Table that was looked up.
    pub table_id: u8,
    /// Cookie of the flow entry that was looked up.
    pub cookie: u64,
    /// Packet metadata (at least in_port).
    pub match_: Match,
    /// The frame (possibly truncated to miss_send_len / max_len).
    pub data: Vec<u8>,
}

impl PacketIn {
    /// A table-miss PACKET_IN of a whole unbuffered frame received on `in_port`.
    pub fn new(in_port: u32, reason: u8, data: Vec<u8>) -> Self {
        PacketIn {
            buffer_id: OFP_NO_BUFFER,
            total_len: u16::try_from(data.len()).unwrap_or(u16::MAX),
            reason,
            table_id: 0,
            cookie: if reason == OFPR_NO_MATCH { u64::MAX } else { 0 },
            match_: Match::new().in_port(in_port),
            data,
        }
    }

    /// The input port from the match, if present.
    pub fn in_port(&self) -> Option<u32> {
        self.match_.get_in_port()
    }

    #[inline]
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("PACKET_IN truncated"));
        let h: [u8; 16] = r.array()?;
        let buffer_id = be32(&h, 0);
        let total_len = be16(&h, 4);
        let reason = h[6];
        let table_id = h[7];
        let cookie = be64(&h, 8);
        let match_ = Match::decode(&mut r)?;
        r.skip(2)?;
        Ok(PacketIn {
            buffer_id,
            total_len,
            reason,
            table_id,
            cookie,
            match_,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.buffer_id);
        buf.put_u16(self.total_len);
        buf.put_u8(self.reason);
        buf.put_u8(self.table_id);
        buf.put_u64(self.cookie);
        self.match_.encode(buf);
        zeros(buf, 2);
        buf.put_slice(&self.data);
    }
}

/// PACKET_OUT body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PacketOut {
    /// Buffer id, or OFP_NO_BUFFER (then `data` holds the frame).
    pub buffer_id: u32,
    /// Packet's input port or OFPP_CONTROLLER.
    pub in_port: u32,
    /// Actions to apply.
    pub actions: Vec<Action>,
    /// The frame when `buffer_id` is OFP_NO_BUFFER.
    pub data: Vec<u8>,
}

impl PacketOut {
    /// Send `data` (unbuffered) with `actions`, as if received on `in_port`
    /// (use OFPP_CONTROLLER when it did not come from a port).
    pub fn new(in_port: u32, actions: Vec<Action>, data: Vec<u8>) -> Self {
        PacketOut {
            buffer_id: OFP_NO_BUFFER,
            in_port,
            actions,
            data,
        }
    }

    #[inline]
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("PACKET_OUT truncated"));
        let buffer_id = r.u32()?;
        let in_port = r.u32()?;
        let actions_len = usize::from(r.u16()?);
        r.skip(6)?;
        let acts = r.bytes(actions_len).map_err(|_| {
            Fail::new(
                ErrorCode::BAD_LEN,
                "PACKET_OUT actions_len exceeds the message",
            )
        })?;
        let actions = decode_actions(acts)?;
        Ok(PacketOut {
            buffer_id,
            in_port,
            actions,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        let Ok(()) = put_packet_out_body::<Infallible>(
            buf,
            self.buffer_id,
            self.in_port,
            |w| {
                for a in &self.actions {
                    w.action(a);
                }
                Ok(())
            },
            &self.data,
        );
    }
}

/// FLOW_REMOVED body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowRemoved {
    /// Cookie of the removed flow.
    pub cookie: u64,
    /// Its priority.
    pub priority: u16,
    /// `OFPRR_*` reason.
    pub reason: u8,
    /// Its table.
    pub table_id: u8,
    /// Time the flow was alive, seconds part.
    pub duration_sec: u32,
    /// Time the flow was alive, nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
    /// Its idle timeout.
    pub idle_timeout: u16,
    /// Its hard timeout.
    pub hard_timeout: u16,
    /// Packets it matched.
    pub packet_count: u64,
    /// Bytes it matched.
    pub byte_count: u64,
    /// Its match.
    pub match_: Match,
}

impl FlowRemoved {
    /// A FLOW_REMOVED for a flow with these attributes and zeroed counters.
    pub fn new(match_: Match, priority: u16, cookie: u64, reason: u8) -> Self {
        FlowRemoved {
            cookie,
            priority,
            reason,
            table_id: 0,
            duration_sec: 0,
            duration_nsec: 0,
            idle_timeout: 0,
            hard_timeout: 0,
            packet_count: 0,
            byte_count: 0,
            match_,
        }
    }

    #[inline]
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("FLOW_REMOVED truncated"));
        let fr = FlowRemoved {
            cookie: r.u64()?,
            priority: r.u16()?,
            reason: r.u8()?,
            table_id: r.u8()?,
            duration_sec: r.u32()?,
            duration_nsec: r.u32()?,
            idle_timeout: r.u16()?,
            hard_timeout: r.u16()?,
            packet_count: r.u64()?,
            byte_count: r.u64()?,
            match_: Match::decode(&mut r)?,
        };
        r.finish(bad_len("FLOW_REMOVED has trailing bytes"))?;
        Ok(fr)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.cookie);
        buf.put_u16(self.priority);
        buf.put_u8(self.reason);
        buf.put_u8(self.table_id);
        buf.put_u32(self.duration_sec);
        buf.put_u32(self.duration_nsec);
        buf.put_u16(self.idle_timeout);
        buf.put_u16(self.hard_timeout);
        buf.put_u64(self.packet_count);
        buf.put_u64(self.byte_count);
        self.match_.encode(buf);
    }
}
