//! Ports and tables: `ofp_port`, PORT_STATUS, PORT_MOD, TABLE_MOD.

use bytes::{BufMut, BytesMut};

use crate::consts::*;
use crate::error::Fail;
use crate::oxm::MacAddr;
use crate::wire::{put_string, zeros, Reader};

use super::{bad_len, exact};

/// Size of `ofp_port` on the wire.
pub const PORT_LEN: usize = 64;
/// Size of the port name field (including the NUL).
pub const MAX_PORT_NAME_LEN: usize = 16;

/// A port description (`ofp_port`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Port {
    /// Port number.
    pub port_no: u32,
    /// Ethernet address.
    pub hw_addr: MacAddr,
    /// Name (at most 15 bytes are sent).
    pub name: String,
    /// `OFPPC_*` configuration bits.
    pub config: u32,
    /// `OFPPS_*` state bits.
    pub state: u32,
    /// Current `OFPPF_*` features.
    pub curr: u32,
    /// Features being advertised.
    pub advertised: u32,
    /// Features supported.
    pub supported: u32,
    /// Features advertised by the peer.
    pub peer: u32,
    /// Current bit rate in kbps.
    pub curr_speed: u32,
    /// Max bit rate in kbps.
    pub max_speed: u32,
}

impl Port {
    /// A live port with this number, address and name.
    pub fn new(port_no: u32, hw_addr: MacAddr, name: impl Into<String>) -> Self {
        Port {
            port_no,
            hw_addr,
            name: name.into(),
            state: OFPPS_LIVE,
            ..Default::default()
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let port_no = r.u32()?;
        r.skip(4)?;
        let hw_addr = MacAddr(r.array()?);
        r.skip(2)?;
        Ok(Port {
            port_no,
            hw_addr,
            name: r.string(MAX_PORT_NAME_LEN)?,
            config: r.u32()?,
            state: r.u32()?,
            curr: r.u32()?,
            advertised: r.u32()?,
            supported: r.u32()?,
            peer: r.u32()?,
            curr_speed: r.u32()?,
            max_speed: r.u32()?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.port_no);
        zeros(buf, 4);
        buf.put_slice(&self.hw_addr.0);
        zeros(buf, 2);
        put_string(buf, &self.name, MAX_PORT_NAME_LEN);
        for v in [
            self.config,
            self.state,
            self.curr,
            self.advertised,
            self.supported,
            self.peer,
            self.curr_speed,
            self.max_speed,
        ] {
            buf.put_u32(v);
        }
    }
}

/// PORT_STATUS body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortStatus {
    /// `OFPPR_*` reason.
    pub reason: u8,
    /// The port.
    pub desc: Port,
}

impl PortStatus {
    /// A PORT_STATUS with this reason.
    pub fn new(reason: u8, desc: Port) -> Self {
        PortStatus { reason, desc }
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        exact(body, 8 + PORT_LEN)?;
        let mut r = Reader::new(body, bad_len("PORT_STATUS truncated"));
        let reason = r.u8()?;
        r.skip(7)?;
        Ok(PortStatus {
            reason,
            desc: Port::decode(&mut r)?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.reason);
        zeros(buf, 7);
        self.desc.encode(buf);
    }
}

/// PORT_MOD body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortMod {
    /// Port number.
    pub port_no: u32,
    /// The port's address (sanity check).
    pub hw_addr: MacAddr,
    /// New `OFPPC_*` bits.
    pub config: u32,
    /// Which `OFPPC_*` bits to change.
    pub mask: u32,
    /// Features to advertise (0 = no change).
    pub advertise: u32,
}

impl PortMod {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        exact(body, 32)?;
        let mut r = Reader::new(body, bad_len("PORT_MOD truncated"));
        let port_no = r.u32()?;
        r.skip(4)?;
        let hw_addr = MacAddr(r.array()?);
        r.skip(2)?;
        Ok(PortMod {
            port_no,
            hw_addr,
            config: r.u32()?,
            mask: r.u32()?,
            advertise: r.u32()?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.port_no);
        zeros(buf, 4);
        buf.put_slice(&self.hw_addr.0);
        zeros(buf, 2);
        buf.put_u32(self.config);
        buf.put_u32(self.mask);
        buf.put_u32(self.advertise);
        zeros(buf, 4);
    }
}

/// TABLE_MOD body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TableMod {
    /// Table id, or OFPTT_ALL.
    pub table_id: u8,
    /// `OFPTC_*` configuration bits.
    pub config: u32,
}

impl TableMod {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        exact(body, 8)?;
        let mut r = Reader::new(body, bad_len("TABLE_MOD truncated"));
        let table_id = r.u8()?;
        r.skip(3)?;
        Ok(TableMod {
            table_id,
            config: r.u32()?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.table_id);
        zeros(buf, 3);
        buf.put_u32(self.config);
    }
}
