//! Groups and meters: GROUP_MOD (buckets), METER_MOD (bands).

use bytes::{BufMut, BytesMut};

use crate::action::{decode_actions, encode_actions, Action};
use crate::consts::*;
use crate::error::{ErrorCode, Fail};
use crate::wire::{pad_to_8, patch_len, zeros, Reader};

use super::bad_len;

/// A group bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// Relative weight (select groups).
    pub weight: u16,
    /// Port whose liveness is watched (fast failover), or OFPP_ANY.
    pub watch_port: u32,
    /// Group whose liveness is watched, or OFPG_ANY.
    pub watch_group: u32,
    /// Actions of the bucket.
    pub actions: Vec<Action>,
}

impl Bucket {
    /// A bucket with these actions, no weight and no watch.
    pub fn new(actions: Vec<Action>) -> Self {
        Bucket {
            weight: 0,
            watch_port: OFPP_ANY,
            watch_group: OFPG_ANY,
            actions,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let bad = Fail::new(ErrorCode::BAD_BUCKET, "bucket length invalid");
        let len = usize::from(r.u16().map_err(|_| bad)?);
        if len < 16 {
            return Err(bad);
        }
        let body = r.bytes(len - 2).map_err(|_| bad)?;
        let mut b = Reader::new(body, bad);
        let weight = b.u16()?;
        let watch_port = b.u32()?;
        let watch_group = b.u32()?;
        b.skip(4)?;
        Ok(Bucket {
            weight,
            watch_port,
            watch_group,
            actions: decode_actions(b.rest())?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u16(0);
        buf.put_u16(self.weight);
        buf.put_u32(self.watch_port);
        buf.put_u32(self.watch_group);
        zeros(buf, 4);
        encode_actions(&self.actions, buf);
        patch_len(buf, start, start);
    }
}

pub(crate) fn decode_buckets(buf: &[u8]) -> Result<Vec<Bucket>, Fail> {
    let mut r = Reader::new(buf, Fail::new(ErrorCode::BAD_BUCKET, "bucket truncated"));
    let mut v = Vec::new();
    while !r.is_empty() {
        v.push(Bucket::decode(&mut r)?);
    }
    Ok(v)
}

pub(crate) fn encode_buckets(b: &[Bucket], buf: &mut BytesMut) {
    for x in b {
        x.encode(buf);
    }
}

/// GROUP_MOD body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupMod {
    /// `OFPGC_*` command.
    pub command: u16,
    /// `OFPGT_*` type.
    pub group_type: u8,
    /// Group id.
    pub group_id: u32,
    /// Buckets.
    pub buckets: Vec<Bucket>,
}

impl GroupMod {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("GROUP_MOD truncated"));
        let command = r.u16()?;
        let group_type = r.u8()?;
        r.skip(1)?;
        let group_id = r.u32()?;
        Ok(GroupMod {
            command,
            group_type,
            group_id,
            buckets: decode_buckets(r.rest())?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.command);
        buf.put_u8(self.group_type);
        zeros(buf, 1);
        buf.put_u32(self.group_id);
        encode_buckets(&self.buckets, buf);
    }
}

/// A meter band.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MeterBand {
    /// OFPMBT_DROP.
    Drop {
        /// Rate for this band.
        rate: u32,
        /// Size of bursts.
        burst_size: u32,
    },
    /// OFPMBT_DSCP_REMARK.
    DscpRemark {
        /// Rate for this band.
        rate: u32,
        /// Size of bursts.
        burst_size: u32,
        /// Number of drop precedence levels to add.
        prec_level: u8,
    },
    /// OFPMBT_EXPERIMENTER, kept raw after the experimenter id.
    Experimenter {
        /// Rate for this band.
        rate: u32,
        /// Size of bursts.
        burst_size: u32,
        /// Experimenter id.
        experimenter: u32,
        /// Bytes after the experimenter id.
        data: Vec<u8>,
    },
    /// Unknown band type, kept raw.
    Unknown {
        /// Band type.
        band_type: u16,
        /// Bytes after the 4-byte type/length header.
        data: Vec<u8>,
    },
}

impl MeterBand {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let bad = Fail::new(ErrorCode::BAD_BAND, "meter band length invalid");
        let ty = r.u16().map_err(|_| bad)?;
        let len = usize::from(r.u16().map_err(|_| bad)?);
        if len < 16 || !len.is_multiple_of(8) {
            return Err(bad);
        }
        let body = r.bytes(len - 4).map_err(|_| bad)?;
        let mut b = Reader::new(body, bad);
        Ok(match ty {
            OFPMBT_DROP if len == 16 => MeterBand::Drop {
                rate: b.u32()?,
                burst_size: b.u32()?,
            },
            OFPMBT_DSCP_REMARK if len == 16 => MeterBand::DscpRemark {
                rate: b.u32()?,
                burst_size: b.u32()?,
                prec_level: b.u8()?,
            },
            OFPMBT_EXPERIMENTER => MeterBand::Experimenter {
                rate: b.u32()?,
                burst_size: b.u32()?,
                experimenter: b.u32()?,
                data: b.rest().to_vec(),
            },
            _ => MeterBand::Unknown {
                band_type: ty,
                data: body.to_vec(),
            },
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        match self {
            MeterBand::Drop { rate, burst_size } => {
                buf.put_u16(OFPMBT_DROP);
                buf.put_u16(16);
                buf.put_u32(*rate);
                buf.put_u32(*burst_size);
                zeros(buf, 4);
            }
            MeterBand::DscpRemark {
                rate,
                burst_size,
                prec_level,
            } => {
                buf.put_u16(OFPMBT_DSCP_REMARK);
                buf.put_u16(16);
                buf.put_u32(*rate);
                buf.put_u32(*burst_size);
                buf.put_u8(*prec_level);
                zeros(buf, 3);
            }
            MeterBand::Experimenter {
                rate,
                burst_size,
                experimenter,
                data,
            } => {
                buf.put_u16(OFPMBT_EXPERIMENTER);
                buf.put_u16(0);
                buf.put_u32(*rate);
                buf.put_u32(*burst_size);
                buf.put_u32(*experimenter);
                buf.put_slice(data);
                pad_to_8(buf, start);
                patch_len(buf, start + 2, start);
            }
            MeterBand::Unknown { band_type, data } => {
                buf.put_u16(*band_type);
                buf.put_u16(0);
                buf.put_slice(data);
                pad_to_8(buf, start);
                patch_len(buf, start + 2, start);
            }
        }
    }
}

pub(crate) fn decode_bands(buf: &[u8]) -> Result<Vec<MeterBand>, Fail> {
    let mut r = Reader::new(buf, Fail::new(ErrorCode::BAD_BAND, "meter band truncated"));
    let mut v = Vec::new();
    while !r.is_empty() {
        v.push(MeterBand::decode(&mut r)?);
    }
    Ok(v)
}

pub(crate) fn encode_bands(b: &[MeterBand], buf: &mut BytesMut) {
    for x in b {
        x.encode(buf);
    }
}

/// METER_MOD body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeterMod {
    /// `OFPMC_*` command.
    pub command: u16,
    /// `OFPMF_*` flags.
    pub flags: u16,
    /// Meter id.
    pub meter_id: u32,
    /// Bands.
    pub bands: Vec<MeterBand>,
}

impl MeterMod {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("METER_MOD truncated"));
        Ok(MeterMod {
            command: r.u16()?,
            flags: r.u16()?,
            meter_id: r.u32()?,
            bands: decode_bands(r.rest())?,
        })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.command);
        buf.put_u16(self.flags);
        buf.put_u32(self.meter_id);
        encode_bands(&self.bands, buf);
    }
}
