//! The 8-byte OpenFlow header (`ofp_header`).

/// The common header of every OpenFlow message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version (0x04 for OpenFlow 1.3).
    pub version: u8,
    /// `OFPT_*` message type.
    pub msg_type: u8,
    /// Length of the whole message, header included.
    pub length: u16,
    /// Transaction id.
    pub xid: u32,
}

impl Header {
    /// Read a header from the front of `buf` (None when shorter than 8 bytes).
    /// Nothing is validated.
    #[inline]
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let (h, _) = buf.split_first_chunk::<8>()?;
        Some(Header {
            version: h[0],
            msg_type: h[1],
            length: u16::from_be_bytes([h[2], h[3]]),
            xid: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        })
    }

    /// The header as 8 bytes.
    pub fn to_bytes(&self) -> [u8; 8] {
        let l = self.length.to_be_bytes();
        let x = self.xid.to_be_bytes();
        [
            self.version,
            self.msg_type,
            l[0],
            l[1],
            x[0],
            x[1],
            x[2],
            x[3],
        ]
    }
}
