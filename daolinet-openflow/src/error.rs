//! Decode and encode errors, and the OFPT_ERROR (type, code) each one maps to.

use std::fmt;

use crate::consts::*;

/// An OFPT_ERROR `(type, code)` pair, as carried by an ERROR message.
///
/// Every [`DecodeError`] says which pair a switch or controller should answer
/// the offending message with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode {
    /// `OFPET_*` error type.
    pub err_type: u16,
    /// Type-specific error code (`OFPBRC_*`, `OFPBMC_*`, ...).
    pub code: u16,
}

impl ErrorCode {
    /// Build a pair from raw numbers.
    pub const fn new(err_type: u16, code: u16) -> Self {
        Self { err_type, code }
    }
    /// OFPET_HELLO_FAILED / OFPHFC_INCOMPATIBLE.
    pub const HELLO_INCOMPATIBLE: Self = Self::new(OFPET_HELLO_FAILED, OFPHFC_INCOMPATIBLE);
    /// OFPET_BAD_REQUEST / OFPBRC_BAD_VERSION.
    pub const BAD_VERSION: Self = Self::new(OFPET_BAD_REQUEST, OFPBRC_BAD_VERSION);
    /// OFPET_BAD_REQUEST / OFPBRC_BAD_TYPE.
    pub const BAD_TYPE: Self = Self::new(OFPET_BAD_REQUEST, OFPBRC_BAD_TYPE);
    /// OFPET_BAD_REQUEST / OFPBRC_BAD_MULTIPART.
    pub const BAD_MULTIPART: Self = Self::new(OFPET_BAD_REQUEST, OFPBRC_BAD_MULTIPART);
    /// OFPET_BAD_REQUEST / OFPBRC_BAD_LEN.
    pub const BAD_LEN: Self = Self::new(OFPET_BAD_REQUEST, OFPBRC_BAD_LEN);
    /// OFPET_BAD_MATCH / OFPBMC_BAD_TYPE.
    pub const BAD_MATCH_TYPE: Self = Self::new(OFPET_BAD_MATCH, OFPBMC_BAD_TYPE);
    /// OFPET_BAD_MATCH / OFPBMC_BAD_LEN.
    pub const BAD_MATCH_LEN: Self = Self::new(OFPET_BAD_MATCH, OFPBMC_BAD_LEN);
    /// OFPET_BAD_ACTION / OFPBAC_BAD_LEN.
    pub const BAD_ACTION_LEN: Self = Self::new(OFPET_BAD_ACTION, OFPBAC_BAD_LEN);
    /// OFPET_BAD_ACTION / OFPBAC_BAD_SET_LEN.
    pub const BAD_SET_LEN: Self = Self::new(OFPET_BAD_ACTION, OFPBAC_BAD_SET_LEN);
    /// OFPET_BAD_INSTRUCTION / OFPBIC_BAD_LEN.
    pub const BAD_INSTRUCTION_LEN: Self = Self::new(OFPET_BAD_INSTRUCTION, OFPBIC_BAD_LEN);
    /// OFPET_FLOW_MOD_FAILED / OFPFMFC_BAD_COMMAND.
    pub const BAD_FLOW_MOD_COMMAND: Self = Self::new(OFPET_FLOW_MOD_FAILED, OFPFMFC_BAD_COMMAND);
    /// OFPET_GROUP_MOD_FAILED / OFPGMFC_BAD_BUCKET.
    pub const BAD_BUCKET: Self = Self::new(OFPET_GROUP_MOD_FAILED, OFPGMFC_BAD_BUCKET);
    /// OFPET_METER_MOD_FAILED / OFPMMFC_BAD_BAND.
    pub const BAD_BAND: Self = Self::new(OFPET_METER_MOD_FAILED, OFPMMFC_BAD_BAND);
    /// OFPET_TABLE_FEATURES_FAILED / OFPTFFC_BAD_LEN.
    pub const BAD_TABLE_FEATURES_LEN: Self =
        Self::new(OFPET_TABLE_FEATURES_FAILED, OFPTFFC_BAD_LEN);

    /// Symbolic names `("OFPET_...", "OFP..._...")` when known.
    pub fn names(&self) -> Option<(&'static str, &'static str)> {
        let (t, codes): (&str, &[&str]) = match self.err_type {
            OFPET_HELLO_FAILED => (
                "OFPET_HELLO_FAILED",
                &["OFPHFC_INCOMPATIBLE", "OFPHFC_EPERM"],
            ),
            OFPET_BAD_REQUEST => (
                "OFPET_BAD_REQUEST",
                &[
                    "OFPBRC_BAD_VERSION",
                    "OFPBRC_BAD_TYPE",
                    "OFPBRC_BAD_MULTIPART",
                    "OFPBRC_BAD_EXPERIMENTER",
                    "OFPBRC_BAD_EXP_TYPE",
                    "OFPBRC_EPERM",
                    "OFPBRC_BAD_LEN",
                    "OFPBRC_BUFFER_EMPTY",
                    "OFPBRC_BUFFER_UNKNOWN",
                    "OFPBRC_BAD_TABLE_ID",
                    "OFPBRC_IS_SLAVE",
                    "OFPBRC_BAD_PORT",
                    "OFPBRC_BAD_PACKET",
                    "OFPBRC_MULTIPART_BUFFER_OVERFLOW",
                ],
            ),
            OFPET_BAD_ACTION => (
                "OFPET_BAD_ACTION",
                &[
                    "OFPBAC_BAD_TYPE",
                    "OFPBAC_BAD_LEN",
                    "OFPBAC_BAD_EXPERIMENTER",
                    "OFPBAC_BAD_EXP_TYPE",
                    "OFPBAC_BAD_OUT_PORT",
                    "OFPBAC_BAD_ARGUMENT",
                    "OFPBAC_EPERM",
                    "OFPBAC_TOO_MANY",
                    "OFPBAC_BAD_QUEUE",
                    "OFPBAC_BAD_OUT_GROUP",
                    "OFPBAC_MATCH_INCONSISTENT",
                    "OFPBAC_UNSUPPORTED_ORDER",
                    "OFPBAC_BAD_TAG",
                    "OFPBAC_BAD_SET_TYPE",
                    "OFPBAC_BAD_SET_LEN",
                    "OFPBAC_BAD_SET_ARGUMENT",
                ],
            ),
            OFPET_BAD_INSTRUCTION => (
                "OFPET_BAD_INSTRUCTION",
                &[
                    "OFPBIC_UNKNOWN_INST",
                    "OFPBIC_UNSUP_INST",
                    "OFPBIC_BAD_TABLE_ID",
                    "OFPBIC_UNSUP_METADATA",
                    "OFPBIC_UNSUP_METADATA_MASK",
                    "OFPBIC_BAD_EXPERIMENTER",
                    "OFPBIC_BAD_EXP_TYPE",
                    "OFPBIC_BAD_LEN",
                    "OFPBIC_EPERM",
                ],
            ),
            OFPET_BAD_MATCH => (
                "OFPET_BAD_MATCH",
                &[
                    "OFPBMC_BAD_TYPE",
                    "OFPBMC_BAD_LEN",
                    "OFPBMC_BAD_TAG",
                    "OFPBMC_BAD_DL_ADDR_MASK",
                    "OFPBMC_BAD_NW_ADDR_MASK",
                    "OFPBMC_BAD_WILDCARDS",
                    "OFPBMC_BAD_FIELD",
                    "OFPBMC_BAD_VALUE",
                    "OFPBMC_BAD_MASK",
                    "OFPBMC_BAD_PREREQ",
                    "OFPBMC_DUP_FIELD",
                    "OFPBMC_EPERM",
                ],
            ),
            OFPET_FLOW_MOD_FAILED => (
                "OFPET_FLOW_MOD_FAILED",
                &[
                    "OFPFMFC_UNKNOWN",
                    "OFPFMFC_TABLE_FULL",
                    "OFPFMFC_BAD_TABLE_ID",
                    "OFPFMFC_OVERLAP",
                    "OFPFMFC_EPERM",
                    "OFPFMFC_BAD_TIMEOUT",
                    "OFPFMFC_BAD_COMMAND",
                    "OFPFMFC_BAD_FLAGS",
                ],
            ),
            OFPET_GROUP_MOD_FAILED => ("OFPET_GROUP_MOD_FAILED", &[]),
            OFPET_PORT_MOD_FAILED => ("OFPET_PORT_MOD_FAILED", &[]),
            OFPET_TABLE_MOD_FAILED => ("OFPET_TABLE_MOD_FAILED", &[]),
            OFPET_QUEUE_OP_FAILED => ("OFPET_QUEUE_OP_FAILED", &[]),
            OFPET_SWITCH_CONFIG_FAILED => ("OFPET_SWITCH_CONFIG_FAILED", &[]),
            OFPET_ROLE_REQUEST_FAILED => (
                "OFPET_ROLE_REQUEST_FAILED",
                &["OFPRRFC_STALE", "OFPRRFC_UNSUP", "OFPRRFC_BAD_ROLE"],
            ),
            OFPET_METER_MOD_FAILED => ("OFPET_METER_MOD_FAILED", &[]),
            OFPET_TABLE_FEATURES_FAILED => ("OFPET_TABLE_FEATURES_FAILED", &[]),
            _ => return None,
        };
        codes.get(usize::from(self.code)).map(|c| (t, *c))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.names() {
            Some((t, c)) => write!(f, "{t}/{c}"),
            None => write!(f, "type {}/code {}", self.err_type, self.code),
        }
    }
}

/// Internal parse failure: what to answer, and a short description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fail {
    pub(crate) code: ErrorCode,
    pub(crate) what: &'static str,
}

impl Fail {
    pub(crate) const fn new(code: ErrorCode, what: &'static str) -> Self {
        Self { code, what }
    }
}

/// Why a message could not be decoded.
///
/// Carries everything needed to answer the peer with an OFPT_ERROR: the
/// `(type, code)` pair ([`DecodeError::code`]), the xid of the offending
/// message when its header was readable, and how many bytes the offending
/// message occupies so the caller can skip it and carry on with the stream.
/// [`DecodeError::reply`] builds the ERROR message itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed OpenFlow message{}: {what} (answer {code})", fmt_ctx(*.msg_type, *.xid))]
pub struct DecodeError {
    /// The OFPT_ERROR `(type, code)` to answer with.
    pub code: ErrorCode,
    /// What was wrong, for logs.
    pub what: &'static str,
    /// xid of the offending message (None when the header itself was short).
    pub xid: Option<u32>,
    /// OFPT_* type of the offending message, when the header was readable.
    pub msg_type: Option<u8>,
    /// Bytes the offending message occupies in the input. `Some(n)`: skip `n`
    /// bytes and keep decoding. `None`: the stream cannot be resynchronised
    /// (header length below 8) and the connection should be closed after
    /// sending the error.
    pub frame_len: Option<usize>,
}

fn fmt_ctx(msg_type: Option<u8>, xid: Option<u32>) -> String {
    match (msg_type, xid) {
        (Some(t), Some(x)) => format!(" (type {t}, xid {x:#x})"),
        (None, Some(x)) => format!(" (xid {x:#x})"),
        _ => String::new(),
    }
}

impl DecodeError {
    /// Build the OFPT_ERROR reply for this error: the message to send and the
    /// xid to send it with. `offending` is the input the decoder was given
    /// (its first [`ERROR_DATA_LEN`] bytes, at most, are echoed back).
    pub fn reply(&self, offending: &[u8]) -> (u32, crate::Message) {
        let end = self
            .frame_len
            .unwrap_or(offending.len())
            .min(offending.len())
            .min(ERROR_DATA_LEN);
        let data = offending.get(..end).unwrap_or(offending).to_vec();
        (
            self.xid.unwrap_or(0),
            crate::Message::Error(crate::ErrorMsg::Standard {
                err_type: self.code.err_type,
                code: self.code.code,
                data,
            }),
        )
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message (or one of its length-prefixed parts) would exceed
    /// the 16-bit length field (or the encoder's configured maximum).
    #[error("encoded message is {len} bytes, more than the maximum {max}")]
    TooLong {
        /// The length that was reached.
        len: usize,
        /// The limit.
        max: usize,
    },
}
