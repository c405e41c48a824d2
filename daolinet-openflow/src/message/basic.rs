//! Handshake and session messages: HELLO, ERROR, EXPERIMENTER, FEATURES,
//! SWITCH_CONFIG, ROLE, ASYNC, QUEUE_GET_CONFIG.

use bytes::{BufMut, BytesMut};

use crate::consts::*;
use crate::error::{ErrorCode, Fail};
use crate::wire::{pad8, pad_to_8, zeros, Reader};

use super::{bad_len, exact};

/// OFPHET_VERSIONBITMAP.
pub const OFPHET_VERSIONBITMAP: u16 = 1;

/// HELLO. `version` is the header version (the highest version the sender
/// supports); HELLO is the only message decoded whatever its version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Version from the OpenFlow header.
    pub version: u8,
    /// Hello elements.
    pub elements: Vec<HelloElement>,
}

/// One HELLO element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HelloElement {
    /// OFPHET_VERSIONBITMAP: bit `n` of the bitmap set means version `n`
    /// is supported.
    VersionBitmap(Vec<u32>),
    /// Unknown element, kept raw.
    Unknown {
        /// Element type.
        element_type: u16,
        /// Element payload (without padding).
        data: Vec<u8>,
    },
}

impl Default for Hello {
    fn default() -> Self {
        Self::new()
    }
}

impl Hello {
    /// An OpenFlow 1.3 HELLO advertising only version 1.3 (like OVS
    /// configured with `protocols=OpenFlow13`).
    pub fn new() -> Self {
        Hello {
            version: OFP_VERSION,
            elements: vec![HelloElement::VersionBitmap(vec![1 << OFP_VERSION])],
        }
    }

    /// Whether the sender of this HELLO supports `version` (using the
    /// version bitmap when present, else the header version).
    pub fn supports(&self, version: u8) -> bool {
        for e in &self.elements {
            if let HelloElement::VersionBitmap(words) = e {
                let w = usize::from(version / 32);
                return words
                    .get(w)
                    .is_some_and(|bits| bits & (1 << (version % 32)) != 0);
            }
        }
        self.version >= version
    }

    pub(crate) fn decode(version: u8, body: &[u8]) -> Result<Self, Fail> {
        let short = Fail::new(ErrorCode::BAD_LEN, "HELLO element truncated");
        let mut r = Reader::new(body, short);
        let mut elements = Vec::new();
        while !r.is_empty() {
            let ty = r.u16()?;
            let len = usize::from(r.u16()?);
            if len < 4 {
                return Err(Fail::new(
                    ErrorCode::BAD_LEN,
                    "HELLO element length below 4",
                ));
            }
            let data = r.bytes(len - 4)?;
            r.skip(pad8(len) - len)?;
            if ty == OFPHET_VERSIONBITMAP && data.len().is_multiple_of(4) {
                let words = data
                    .chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                elements.push(HelloElement::VersionBitmap(words));
            } else {
                elements.push(HelloElement::Unknown {
                    element_type: ty,
                    data: data.to_vec(),
                });
            }
        }
        Ok(Hello { version, elements })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        for e in &self.elements {
            let start = buf.len();
            match e {
                HelloElement::VersionBitmap(words) => {
                    buf.put_u16(OFPHET_VERSIONBITMAP);
                    buf.put_u16(clamp16(4 + 4 * words.len()));
                    for w in words {
                        buf.put_u32(*w);
                    }
                }
                HelloElement::Unknown { element_type, data } => {
                    buf.put_u16(*element_type);
                    buf.put_u16(clamp16(4 + data.len()));
                    buf.put_slice(data);
                }
            }
            pad_to_8(buf, start);
        }
    }
}

pub(crate) fn clamp16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// OFPT_ERROR body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorMsg {
    /// A standard error.
    Standard {
        /// OFPET_* type.
        err_type: u16,
        /// Type-specific code.
        code: u16,
        /// Usually the first 64 bytes of the offending message (for
        /// HELLO_FAILED an ASCII explanation).
        data: Vec<u8>,
    },
    /// OFPET_EXPERIMENTER.
    Experimenter {
        /// Experimenter-defined type.
        exp_type: u16,
        /// Experimenter id.
        experimenter: u32,
        /// Experimenter-defined data.
        data: Vec<u8>,
    },
}

impl ErrorMsg {
    /// An error answering `offending` (a whole message as received): carries
    /// its first [`ERROR_DATA_LEN`] bytes.
    pub fn new(code: ErrorCode, offending: &[u8]) -> Self {
        let n = offending.len().min(ERROR_DATA_LEN);
        ErrorMsg::Standard {
            err_type: code.err_type,
            code: code.code,
            data: offending.get(..n).unwrap_or_default().to_vec(),
        }
    }

    /// The (type, code) pair of a standard error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ErrorMsg::Standard { err_type, code, .. } => Some(ErrorCode::new(*err_type, *code)),
            ErrorMsg::Experimenter { .. } => None,
        }
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("ERROR truncated"));
        let err_type = r.u16()?;
        if err_type == OFPET_EXPERIMENTER {
            let exp_type = r.u16()?;
            let experimenter = r.u32()?;
            return Ok(ErrorMsg::Experimenter {
                exp_type,
                experimenter,
                data: r.rest().to_vec(),
            });
        }
        let code = r.u16()?;
        Ok(ErrorMsg::Standard {
            err_type,
            code,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        match self {
            ErrorMsg::Standard {
                err_type,
                code,
                data,
            } => {
                buf.put_u16(*err_type);
                buf.put_u16(*code);
                buf.put_slice(data);
            }
            ErrorMsg::Experimenter {
                exp_type,
                experimenter,
                data,
            } => {
                buf.put_u16(OFPET_EXPERIMENTER);
                buf.put_u16(*exp_type);
                buf.put_u32(*experimenter);
                buf.put_slice(data);
            }
        }
    }
}

/// OFPT_EXPERIMENTER body (also used for experimenter multipart bodies).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExperimenterMsg {
    /// Experimenter id.
    pub experimenter: u32,
    /// Experimenter-defined type.
    pub exp_type: u32,
    /// Experimenter-defined data.
    pub data: Vec<u8>,
}

impl ExperimenterMsg {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("EXPERIMENTER truncated"));
        Ok(ExperimenterMsg {
            experimenter: r.u32()?,
            exp_type: r.u32()?,
            data: r.rest().to_vec(),
        })
    }
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.experimenter);
        buf.put_u32(self.exp_type);
        buf.put_slice(&self.data);
    }
}

/// FEATURES_REPLY body (`ofp_switch_features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SwitchFeatures {
    /// Datapath unique id (lower 48 bits are a MAC address).
    pub datapath_id: u64,
    /// Max packets buffered at once.
    pub n_buffers: u32,
    /// Number of tables supported by the datapath.
    pub n_tables: u8,
    /// Identify auxiliary connections (0 for the main connection).
    pub auxiliary_id: u8,
    /// Bitmap of `OFPC_*` capabilities.
    pub capabilities: u32,
    /// Reserved.
    pub reserved: u32,
}

impl SwitchFeatures {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("FEATURES_REPLY truncated"));
        exact(body, 24)?;
        let datapath_id = r.u64()?;
        let n_buffers = r.u32()?;
        let n_tables = r.u8()?;
        let auxiliary_id = r.u8()?;
        r.skip(2)?;
        Ok(SwitchFeatures {
            datapath_id,
            n_buffers,
            n_tables,
            auxiliary_id,
            capabilities: r.u32()?,
            reserved: r.u32()?,
        })
    }
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.datapath_id);
        buf.put_u32(self.n_buffers);
        buf.put_u8(self.n_tables);
        buf.put_u8(self.auxiliary_id);
        zeros(buf, 2);
        buf.put_u32(self.capabilities);
        buf.put_u32(self.reserved);
    }
}

/// GET_CONFIG_REPLY / SET_CONFIG body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SwitchConfig {
    /// `OFPC_FRAG_*` flags.
    pub flags: u16,
    /// Max bytes of a table-miss packet sent to the controller.
    pub miss_send_len: u16,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            flags: OFPC_FRAG_NORMAL,
            miss_send_len: 128,
        }
    }
}

impl SwitchConfig {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        exact(body, 4)?;
        let mut r = Reader::new(body, bad_len("SWITCH_CONFIG truncated"));
        Ok(SwitchConfig {
            flags: r.u16()?,
            miss_send_len: r.u16()?,
        })
    }
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.flags);
        buf.put_u16(self.miss_send_len);
    }
}

/// ROLE_REQUEST / ROLE_REPLY body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoleMsg {
    /// `OFPCR_ROLE_*`.
    pub role: u32,
    /// Master election generation id.
    pub generation_id: u64,
}

impl RoleMsg {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        exact(body, 16)?;
        let mut r = Reader::new(body, bad_len("ROLE truncated"));
        let role = r.u32()?;
        r.skip(4)?;
        Ok(RoleMsg {
            role,
            generation_id: r.u64()?,
        })
    }
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.role);
        zeros(buf, 4);
        buf.put_u64(self.generation_id);
    }
}

/// GET_ASYNC_REPLY / SET_ASYNC body: `[master/equal, slave]` masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AsyncConfig {
    /// Bitmasks of `OFPR_*` values.
    pub packet_in_mask: [u32; 2],
    /// Bitmasks of `OFPPR_*` values.
    pub port_status_mask: [u32; 2],
    /// Bitmasks of `OFPRR_*` values.
    pub flow_removed_mask: [u32; 2],
}

impl AsyncConfig {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        exact(body, 24)?;
        let mut r = Reader::new(body, bad_len("ASYNC truncated"));
        Ok(AsyncConfig {
            packet_in_mask: [r.u32()?, r.u32()?],
            port_status_mask: [r.u32()?, r.u32()?],
            flow_removed_mask: [r.u32()?, r.u32()?],
        })
    }
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        for v in self
            .packet_in_mask
            .iter()
            .chain(&self.port_status_mask)
            .chain(&self.flow_removed_mask)
        {
            buf.put_u32(*v);
        }
    }
}

/// QUEUE_GET_CONFIG_REPLY body; the queue descriptions are kept raw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueGetConfigReply {
    /// Port that was queried.
    pub port: u32,
    /// Encoded `ofp_packet_queue` list.
    pub queues: Vec<u8>,
}

/// Decode an 8-byte `port, pad[4]` body.
pub(crate) fn decode_port_pad(body: &[u8]) -> Result<u32, Fail> {
    exact(body, 8)?;
    Reader::new(body, bad_len("body truncated")).u32()
}

/// Encode an 8-byte `port, pad[4]` body.
pub(crate) fn encode_port_pad(port: u32, buf: &mut BytesMut) {
    buf.put_u32(port);
    zeros(buf, 4);
}

impl QueueGetConfigReply {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("QUEUE_GET_CONFIG_REPLY truncated"));
        let port = r.u32()?;
        r.skip(4)?;
        Ok(QueueGetConfigReply {
            port,
            queues: r.rest().to_vec(),
        })
    }
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        encode_port_pad(self.port, buf);
        buf.put_slice(&self.queues);
    }
}
