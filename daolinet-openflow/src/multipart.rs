//! MULTIPART_REQUEST / MULTIPART_REPLY bodies (statistics and descriptions).

use bytes::{BufMut, BytesMut};

use crate::consts::*;
use crate::error::{ErrorCode, Fail};
use crate::instruction::{decode_instructions, encode_instructions, Instruction};
use crate::message::basic::{decode_port_pad, encode_port_pad, ExperimenterMsg};
use crate::message::group::{decode_bands, decode_buckets, encode_bands, encode_buckets};
use crate::message::port::{Port, PORT_LEN};
use crate::message::{bad_len, exact};
use crate::oxm::Match;
use crate::wire::{pad8, pad_to_8, patch_len, patch_u16, put_string, zeros, Reader};
use crate::{Bucket, MeterBand};

/// A MULTIPART_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MultipartRequest {
    /// `OFPMPF_REQ_*` flags.
    pub flags: u16,
    /// The request.
    pub body: MultipartRequestBody,
}

impl MultipartRequest {
    /// A request with no flags.
    pub fn new(body: MultipartRequestBody) -> Self {
        MultipartRequest { flags: 0, body }
    }
}

/// The body of a MULTIPART_REQUEST, by `OFPMP_*` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MultipartRequestBody {
    /// OFPMP_DESC.
    Desc,
    /// OFPMP_FLOW.
    Flow(FlowStatsRequest),
    /// OFPMP_AGGREGATE.
    Aggregate(FlowStatsRequest),
    /// OFPMP_TABLE.
    Table,
    /// OFPMP_PORT_STATS for a port (OFPP_ANY = all).
    PortStats(u32),
    /// OFPMP_QUEUE.
    Queue {
        /// Port (OFPP_ANY = all).
        port_no: u32,
        /// Queue (OFPQ_ALL = 0xffffffff).
        queue_id: u32,
    },
    /// OFPMP_GROUP for a group (OFPG_ALL = all).
    Group(u32),
    /// OFPMP_GROUP_DESC.
    GroupDesc,
    /// OFPMP_GROUP_FEATURES.
    GroupFeatures,
    /// OFPMP_METER for a meter (OFPM_ALL = all).
    Meter(u32),
    /// OFPMP_METER_CONFIG for a meter (OFPM_ALL = all).
    MeterConfig(u32),
    /// OFPMP_METER_FEATURES.
    MeterFeatures,
    /// OFPMP_TABLE_FEATURES (empty = query only).
    TableFeatures(Vec<TableFeatures>),
    /// OFPMP_PORT_DESC.
    PortDesc,
    /// OFPMP_EXPERIMENTER.
    Experimenter(ExperimenterMsg),
    /// Unknown multipart type, kept raw.
    Unknown {
        /// The multipart type.
        mp_type: u16,
        /// The body.
        data: Vec<u8>,
    },
}

impl MultipartRequestBody {
    /// The `OFPMP_*` type.
    pub fn mp_type(&self) -> u16 {
        use MultipartRequestBody as B;
        match self {
            B::Desc => OFPMP_DESC,
            B::Flow(_) => OFPMP_FLOW,
            B::Aggregate(_) => OFPMP_AGGREGATE,
            B::Table => OFPMP_TABLE,
            B::PortStats(_) => OFPMP_PORT_STATS,
            B::Queue { .. } => OFPMP_QUEUE,
            B::Group(_) => OFPMP_GROUP,
            B::GroupDesc => OFPMP_GROUP_DESC,
            B::GroupFeatures => OFPMP_GROUP_FEATURES,
            B::Meter(_) => OFPMP_METER,
            B::MeterConfig(_) => OFPMP_METER_CONFIG,
            B::MeterFeatures => OFPMP_METER_FEATURES,
            B::TableFeatures(_) => OFPMP_TABLE_FEATURES,
            B::PortDesc => OFPMP_PORT_DESC,
            B::Experimenter(_) => OFPMP_EXPERIMENTER,
            B::Unknown { mp_type, .. } => *mp_type,
        }
    }
}

/// Body of OFPMP_FLOW and OFPMP_AGGREGATE requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowStatsRequest {
    /// Table to read, or OFPTT_ALL.
    pub table_id: u8,
    /// Require an output action to this port (OFPP_ANY = any).
    pub out_port: u32,
    /// Require an output to this group (OFPG_ANY = any).
    pub out_group: u32,
    /// Cookie value to match under `cookie_mask`.
    pub cookie: u64,
    /// Cookie bits that must match (0 = any).
    pub cookie_mask: u64,
    /// Fields to match.
    pub match_: Match,
}

impl Default for FlowStatsRequest {
    fn default() -> Self {
        FlowStatsRequest {
            table_id: OFPTT_ALL,
            out_port: OFPP_ANY,
            out_group: OFPG_ANY,
            cookie: 0,
            cookie_mask: 0,
            match_: Match::new(),
        }
    }
}

impl FlowStatsRequest {
    fn decode(body: &[u8]) -> Result<Self, Fail> {
        let mut r = Reader::new(body, bad_len("flow stats request truncated"));
        let table_id = r.u8()?;
        r.skip(3)?;
        let out_port = r.u32()?;
        let out_group = r.u32()?;
        r.skip(4)?;
        let req = FlowStatsRequest {
            table_id,
            out_port,
            out_group,
            cookie: r.u64()?,
            cookie_mask: r.u64()?,
            match_: Match::decode(&mut r)?,
        };
        r.finish(bad_len("flow stats request has trailing bytes"))?;
        Ok(req)
    }
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.table_id);
        zeros(buf, 3);
        buf.put_u32(self.out_port);
        buf.put_u32(self.out_group);
        zeros(buf, 4);
        buf.put_u64(self.cookie);
        buf.put_u64(self.cookie_mask);
        self.match_.encode(buf);
    }
}

impl MultipartRequest {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        use MultipartRequestBody as B;
        let mut r = Reader::new(body, bad_len("MULTIPART_REQUEST truncated"));
        let mp_type = r.u16()?;
        let flags = r.u16()?;
        r.skip(4)?;
        let b = r.rest();
        let empty = |v: B| exact(b, 0).map(|_| v);
        let body = match mp_type {
            OFPMP_DESC => empty(B::Desc)?,
            OFPMP_FLOW => B::Flow(FlowStatsRequest::decode(b)?),
            OFPMP_AGGREGATE => B::Aggregate(FlowStatsRequest::decode(b)?),
            OFPMP_TABLE => empty(B::Table)?,
            OFPMP_PORT_STATS => B::PortStats(decode_port_pad(b)?),
            OFPMP_QUEUE => {
                exact(b, 8)?;
                let mut q = Reader::new(b, bad_len("queue stats request truncated"));
                B::Queue {
                    port_no: q.u32()?,
                    queue_id: q.u32()?,
                }
            }
            OFPMP_GROUP => B::Group(decode_port_pad(b)?),
            OFPMP_GROUP_DESC => empty(B::GroupDesc)?,
            OFPMP_GROUP_FEATURES => empty(B::GroupFeatures)?,
            OFPMP_METER => B::Meter(decode_port_pad(b)?),
            OFPMP_METER_CONFIG => B::MeterConfig(decode_port_pad(b)?),
            OFPMP_METER_FEATURES => empty(B::MeterFeatures)?,
            OFPMP_TABLE_FEATURES => B::TableFeatures(decode_list(b, TableFeatures::decode)?),
            OFPMP_PORT_DESC => empty(B::PortDesc)?,
            OFPMP_EXPERIMENTER => B::Experimenter(ExperimenterMsg::decode(b)?),
            _ => B::Unknown {
                mp_type,
                data: b.to_vec(),
            },
        };
        Ok(MultipartRequest { flags, body })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        use MultipartRequestBody as B;
        buf.put_u16(self.body.mp_type());
        buf.put_u16(self.flags);
        zeros(buf, 4);
        match &self.body {
            B::Desc
            | B::Table
            | B::GroupDesc
            | B::GroupFeatures
            | B::MeterFeatures
            | B::PortDesc => {}
            B::Flow(f) | B::Aggregate(f) => f.encode(buf),
            B::PortStats(p) | B::Group(p) | B::Meter(p) | B::MeterConfig(p) => {
                encode_port_pad(*p, buf)
            }
            B::Queue { port_no, queue_id } => {
                buf.put_u32(*port_no);
                buf.put_u32(*queue_id);
            }
            B::TableFeatures(t) => t.iter().for_each(|t| t.encode(buf)),
            B::Experimenter(e) => e.encode(buf),
            B::Unknown { data, .. } => buf.put_slice(data),
        }
    }
}

/// A MULTIPART_REPLY.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MultipartReply {
    /// `OFPMPF_REPLY_*` flags (OFPMPF_REPLY_MORE when more replies follow).
    pub flags: u16,
    /// The reply.
    pub body: MultipartReplyBody,
}

impl MultipartReply {
    /// A final (no REPLY_MORE) reply.
    pub fn new(body: MultipartReplyBody) -> Self {
        MultipartReply { flags: 0, body }
    }
}

/// The body of a MULTIPART_REPLY, by `OFPMP_*` type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MultipartReplyBody {
    /// OFPMP_DESC.
    Desc(Desc),
    /// OFPMP_FLOW.
    Flow(Vec<FlowStats>),
    /// OFPMP_AGGREGATE.
    Aggregate(AggregateStats),
    /// OFPMP_TABLE.
    Table(Vec<TableStats>),
    /// OFPMP_PORT_STATS.
    PortStats(Vec<PortStats>),
    /// OFPMP_QUEUE.
    Queue(Vec<QueueStats>),
    /// OFPMP_GROUP.
    Group(Vec<GroupStats>),
    /// OFPMP_GROUP_DESC.
    GroupDesc(Vec<GroupDesc>),
    /// OFPMP_GROUP_FEATURES.
    GroupFeatures(GroupFeatures),
    /// OFPMP_METER.
    Meter(Vec<MeterStats>),
    /// OFPMP_METER_CONFIG.
    MeterConfig(Vec<MeterConfig>),
    /// OFPMP_METER_FEATURES.
    MeterFeatures(MeterFeatures),
    /// OFPMP_TABLE_FEATURES.
    TableFeatures(Vec<TableFeatures>),
    /// OFPMP_PORT_DESC.
    PortDesc(Vec<Port>),
    /// OFPMP_EXPERIMENTER.
    Experimenter(ExperimenterMsg),
    /// Unknown multipart type, kept raw.
    Unknown {
        /// The multipart type.
        mp_type: u16,
        /// The body.
        data: Vec<u8>,
    },
}

impl MultipartReplyBody {
    /// The `OFPMP_*` type.
    pub fn mp_type(&self) -> u16 {
        use MultipartReplyBody as B;
        match self {
            B::Desc(_) => OFPMP_DESC,
            B::Flow(_) => OFPMP_FLOW,
            B::Aggregate(_) => OFPMP_AGGREGATE,
            B::Table(_) => OFPMP_TABLE,
            B::PortStats(_) => OFPMP_PORT_STATS,
            B::Queue(_) => OFPMP_QUEUE,
            B::Group(_) => OFPMP_GROUP,
            B::GroupDesc(_) => OFPMP_GROUP_DESC,
            B::GroupFeatures(_) => OFPMP_GROUP_FEATURES,
            B::Meter(_) => OFPMP_METER,
            B::MeterConfig(_) => OFPMP_METER_CONFIG,
            B::MeterFeatures(_) => OFPMP_METER_FEATURES,
            B::TableFeatures(_) => OFPMP_TABLE_FEATURES,
            B::PortDesc(_) => OFPMP_PORT_DESC,
            B::Experimenter(_) => OFPMP_EXPERIMENTER,
            B::Unknown { mp_type, .. } => *mp_type,
        }
    }
}

impl MultipartReply {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Fail> {
        use MultipartReplyBody as B;
        let mut r = Reader::new(body, bad_len("MULTIPART_REPLY truncated"));
        let mp_type = r.u16()?;
        let flags = r.u16()?;
        r.skip(4)?;
        let b = r.rest();
        let body = match mp_type {
            OFPMP_DESC => B::Desc(Desc::decode(b)?),
            OFPMP_FLOW => B::Flow(decode_list(b, FlowStats::decode)?),
            OFPMP_AGGREGATE => B::Aggregate(AggregateStats::decode(b)?),
            OFPMP_TABLE => B::Table(decode_fixed(b, 24, TableStats::decode)?),
            OFPMP_PORT_STATS => B::PortStats(decode_fixed(b, 112, PortStats::decode)?),
            OFPMP_QUEUE => B::Queue(decode_fixed(b, 40, QueueStats::decode)?),
            OFPMP_GROUP => B::Group(decode_list(b, GroupStats::decode)?),
            OFPMP_GROUP_DESC => B::GroupDesc(decode_list(b, GroupDesc::decode)?),
            OFPMP_GROUP_FEATURES => B::GroupFeatures(GroupFeatures::decode(b)?),
            OFPMP_METER => B::Meter(decode_list(b, MeterStats::decode)?),
            OFPMP_METER_CONFIG => B::MeterConfig(decode_list(b, MeterConfig::decode)?),
            OFPMP_METER_FEATURES => B::MeterFeatures(MeterFeatures::decode(b)?),
            OFPMP_TABLE_FEATURES => B::TableFeatures(decode_list(b, TableFeatures::decode)?),
            OFPMP_PORT_DESC => B::PortDesc(decode_fixed(b, PORT_LEN, Port::decode)?),
            OFPMP_EXPERIMENTER => B::Experimenter(ExperimenterMsg::decode(b)?),
            _ => B::Unknown {
                mp_type,
                data: b.to_vec(),
            },
        };
        Ok(MultipartReply { flags, body })
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        use MultipartReplyBody as B;
        buf.put_u16(self.body.mp_type());
        buf.put_u16(self.flags);
        zeros(buf, 4);
        match &self.body {
            B::Desc(d) => d.encode(buf),
            B::Flow(v) => v.iter().for_each(|x| x.encode(buf)),
            B::Aggregate(a) => a.encode(buf),
            B::Table(v) => v.iter().for_each(|x| x.encode(buf)),
            B::PortStats(v) => v.iter().for_each(|x| x.encode(buf)),
            B::Queue(v) => v.iter().for_each(|x| x.encode(buf)),
            B::Group(v) => v.iter().for_each(|x| x.encode(buf)),
            B::GroupDesc(v) => v.iter().for_each(|x| x.encode(buf)),
            B::GroupFeatures(g) => g.encode(buf),
            B::Meter(v) => v.iter().for_each(|x| x.encode(buf)),
            B::MeterConfig(v) => v.iter().for_each(|x| x.encode(buf)),
            B::MeterFeatures(m) => m.encode(buf),
            B::TableFeatures(v) => v.iter().for_each(|x| x.encode(buf)),
            B::PortDesc(v) => v.iter().for_each(|x| x.encode(buf)),
            B::Experimenter(e) => e.encode(buf),
            B::Unknown { data, .. } => buf.put_slice(data),
        }
    }
}

/// Decode a list of fixed-size records.
fn decode_fixed<T>(
    b: &[u8],
    size: usize,
    f: impl Fn(&mut Reader<'_>) -> Result<T, Fail>,
) -> Result<Vec<T>, Fail> {
    if !b.len().is_multiple_of(size) {
        return Err(bad_len("multipart body is not a whole number of records"));
    }
    let mut r = Reader::new(b, bad_len("multipart record truncated"));
    let mut v = Vec::with_capacity(b.len() / size);
    while !r.is_empty() {
        v.push(f(&mut r)?);
    }
    Ok(v)
}

/// Decode a list of records that start with a u16 length (checked > 0 by
/// each decoder).
fn decode_list<T>(
    b: &[u8],
    f: impl Fn(&mut Reader<'_>) -> Result<T, Fail>,
) -> Result<Vec<T>, Fail> {
    let mut r = Reader::new(b, bad_len("multipart record truncated"));
    let mut v = Vec::new();
    while !r.is_empty() {
        v.push(f(&mut r)?);
    }
    Ok(v)
}

/// Take a length-prefixed record: reads the u16 length at `len_off` bytes
/// into the record and returns the whole record (which must be at least
/// `min` bytes).
fn take_record<'a>(r: &mut Reader<'a>, len_off: usize, min: usize) -> Result<Reader<'a>, Fail> {
    let short = bad_len("multipart record length invalid");
    let mut peek = *r;
    peek.skip(len_off).map_err(|_| short)?;
    let len = usize::from(peek.u16().map_err(|_| short)?);
    if len < min {
        return Err(short);
    }
    let rec = r.bytes(len).map_err(|_| short)?;
    Ok(Reader::new(rec, short))
}

/// Switch description (OFPMP_DESC reply).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Desc {
    /// Manufacturer description.
    pub mfr_desc: String,
    /// Hardware description.
    pub hw_desc: String,
    /// Software description.
    pub sw_desc: String,
    /// Serial number.
    pub serial_num: String,
    /// Human readable description of datapath.
    pub dp_desc: String,
}

impl Desc {
    fn decode(b: &[u8]) -> Result<Self, Fail> {
        exact(b, 1056)?;
        let mut r = Reader::new(b, bad_len("desc truncated"));
        Ok(Desc {
            mfr_desc: r.string(256)?,
            hw_desc: r.string(256)?,
            sw_desc: r.string(256)?,
            serial_num: r.string(32)?,
            dp_desc: r.string(256)?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        put_string(buf, &self.mfr_desc, 256);
        put_string(buf, &self.hw_desc, 256);
        put_string(buf, &self.sw_desc, 256);
        put_string(buf, &self.serial_num, 32);
        put_string(buf, &self.dp_desc, 256);
    }
}

/// One flow entry in an OFPMP_FLOW reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowStats {
    /// Table the flow is in.
    pub table_id: u8,
    /// Time alive, seconds.
    pub duration_sec: u32,
    /// Time alive, nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
    /// Priority.
    pub priority: u16,
    /// Idle timeout.
    pub idle_timeout: u16,
    /// Hard timeout.
    pub hard_timeout: u16,
    /// `OFPFF_*` flags.
    pub flags: u16,
    /// Cookie.
    pub cookie: u64,
    /// Packets matched.
    pub packet_count: u64,
    /// Bytes matched.
    pub byte_count: u64,
    /// Match.
    pub match_: Match,
    /// Instructions.
    pub instructions: Vec<Instruction>,
}

impl FlowStats {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let mut b = take_record(r, 0, 56)?;
        b.skip(2)?;
        let table_id = b.u8()?;
        b.skip(1)?;
        let duration_sec = b.u32()?;
        let duration_nsec = b.u32()?;
        let priority = b.u16()?;
        let idle_timeout = b.u16()?;
        let hard_timeout = b.u16()?;
        let flags = b.u16()?;
        b.skip(4)?;
        Ok(FlowStats {
            table_id,
            duration_sec,
            duration_nsec,
            priority,
            idle_timeout,
            hard_timeout,
            flags,
            cookie: b.u64()?,
            packet_count: b.u64()?,
            byte_count: b.u64()?,
            match_: Match::decode(&mut b)?,
            instructions: decode_instructions(b.rest())?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u16(0);
        buf.put_u8(self.table_id);
        zeros(buf, 1);
        buf.put_u32(self.duration_sec);
        buf.put_u32(self.duration_nsec);
        buf.put_u16(self.priority);
        buf.put_u16(self.idle_timeout);
        buf.put_u16(self.hard_timeout);
        buf.put_u16(self.flags);
        zeros(buf, 4);
        buf.put_u64(self.cookie);
        buf.put_u64(self.packet_count);
        buf.put_u64(self.byte_count);
        self.match_.encode(buf);
        encode_instructions(&self.instructions, buf);
        patch_len(buf, start, start);
    }
}

/// OFPMP_AGGREGATE reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AggregateStats {
    /// Packets in flows.
    pub packet_count: u64,
    /// Bytes in flows.
    pub byte_count: u64,
    /// Number of flows.
    pub flow_count: u32,
}

impl AggregateStats {
    fn decode(b: &[u8]) -> Result<Self, Fail> {
        exact(b, 24)?;
        let mut r = Reader::new(b, bad_len("aggregate truncated"));
        Ok(AggregateStats {
            packet_count: r.u64()?,
            byte_count: r.u64()?,
            flow_count: r.u32()?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.packet_count);
        buf.put_u64(self.byte_count);
        buf.put_u32(self.flow_count);
        zeros(buf, 4);
    }
}

/// One table in an OFPMP_TABLE reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TableStats {
    /// Table id.
    pub table_id: u8,
    /// Active entries.
    pub active_count: u32,
    /// Packets looked up in table.
    pub lookup_count: u64,
    /// Packets that hit table.
    pub matched_count: u64,
}

impl TableStats {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let table_id = r.u8()?;
        r.skip(3)?;
        Ok(TableStats {
            table_id,
            active_count: r.u32()?,
            lookup_count: r.u64()?,
            matched_count: r.u64()?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.table_id);
        zeros(buf, 3);
        buf.put_u32(self.active_count);
        buf.put_u64(self.lookup_count);
        buf.put_u64(self.matched_count);
    }
}

/// One port in an OFPMP_PORT_STATS reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortStats {
    /// Port number.
    pub port_no: u32,
    /// Received packets.
    pub rx_packets: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Packets dropped by RX.
    pub rx_dropped: u64,
    /// Packets dropped by TX.
    pub tx_dropped: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Frame alignment errors.
    pub rx_frame_err: u64,
    /// Packets with RX overrun.
    pub rx_over_err: u64,
    /// CRC errors.
    pub rx_crc_err: u64,
    /// Collisions.
    pub collisions: u64,
    /// Time port has been alive, seconds.
    pub duration_sec: u32,
    /// Time port has been alive, nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
}

impl PortStats {
    /// Counters for `port_no`, all zero.
    pub fn new(port_no: u32) -> Self {
        PortStats {
            port_no,
            ..Default::default()
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let port_no = r.u32()?;
        r.skip(4)?;
        Ok(PortStats {
            port_no,
            rx_packets: r.u64()?,
            tx_packets: r.u64()?,
            rx_bytes: r.u64()?,
            tx_bytes: r.u64()?,
            rx_dropped: r.u64()?,
            tx_dropped: r.u64()?,
            rx_errors: r.u64()?,
            tx_errors: r.u64()?,
            rx_frame_err: r.u64()?,
            rx_over_err: r.u64()?,
            rx_crc_err: r.u64()?,
            collisions: r.u64()?,
            duration_sec: r.u32()?,
            duration_nsec: r.u32()?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.port_no);
        zeros(buf, 4);
        for v in [
            self.rx_packets,
            self.tx_packets,
            self.rx_bytes,
            self.tx_bytes,
            self.rx_dropped,
            self.tx_dropped,
            self.rx_errors,
            self.tx_errors,
            self.rx_frame_err,
            self.rx_over_err,
            self.rx_crc_err,
            self.collisions,
        ] {
            buf.put_u64(v);
        }
        buf.put_u32(self.duration_sec);
        buf.put_u32(self.duration_nsec);
    }
}

/// One queue in an OFPMP_QUEUE reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QueueStats {
    /// Port.
    pub port_no: u32,
    /// Queue.
    pub queue_id: u32,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
    /// Packets dropped due to overrun.
    pub tx_errors: u64,
    /// Time alive, seconds.
    pub duration_sec: u32,
    /// Time alive, nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
}

impl QueueStats {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        Ok(QueueStats {
            port_no: r.u32()?,
            queue_id: r.u32()?,
            tx_bytes: r.u64()?,
            tx_packets: r.u64()?,
            tx_errors: r.u64()?,
            duration_sec: r.u32()?,
            duration_nsec: r.u32()?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.port_no);
        buf.put_u32(self.queue_id);
        buf.put_u64(self.tx_bytes);
        buf.put_u64(self.tx_packets);
        buf.put_u64(self.tx_errors);
        buf.put_u32(self.duration_sec);
        buf.put_u32(self.duration_nsec);
    }
}

/// Packet and byte counters (group buckets, meter bands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Counters {
    /// Packets.
    pub packet_count: u64,
    /// Bytes.
    pub byte_count: u64,
}

fn decode_counters(r: &mut Reader<'_>) -> Result<Vec<Counters>, Fail> {
    if !r.remaining().is_multiple_of(16) {
        return Err(bad_len("counter list is not a whole number of records"));
    }
    let mut v = Vec::with_capacity(r.remaining() / 16);
    while !r.is_empty() {
        v.push(Counters {
            packet_count: r.u64()?,
            byte_count: r.u64()?,
        });
    }
    Ok(v)
}

fn encode_counters(v: &[Counters], buf: &mut BytesMut) {
    for c in v {
        buf.put_u64(c.packet_count);
        buf.put_u64(c.byte_count);
    }
}

/// One group in an OFPMP_GROUP reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupStats {
    /// Group id.
    pub group_id: u32,
    /// Flows or groups that forward to this group.
    pub ref_count: u32,
    /// Packets processed.
    pub packet_count: u64,
    /// Bytes processed.
    pub byte_count: u64,
    /// Time alive, seconds.
    pub duration_sec: u32,
    /// Time alive, nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
    /// Per-bucket counters.
    pub bucket_stats: Vec<Counters>,
}

impl GroupStats {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let mut b = take_record(r, 0, 40)?;
        b.skip(4)?;
        let group_id = b.u32()?;
        let ref_count = b.u32()?;
        b.skip(4)?;
        Ok(GroupStats {
            group_id,
            ref_count,
            packet_count: b.u64()?,
            byte_count: b.u64()?,
            duration_sec: b.u32()?,
            duration_nsec: b.u32()?,
            bucket_stats: decode_counters(&mut b)?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u16(0);
        zeros(buf, 2);
        buf.put_u32(self.group_id);
        buf.put_u32(self.ref_count);
        zeros(buf, 4);
        buf.put_u64(self.packet_count);
        buf.put_u64(self.byte_count);
        buf.put_u32(self.duration_sec);
        buf.put_u32(self.duration_nsec);
        encode_counters(&self.bucket_stats, buf);
        patch_len(buf, start, start);
    }
}

/// One group in an OFPMP_GROUP_DESC reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupDesc {
    /// `OFPGT_*` type.
    pub group_type: u8,
    /// Group id.
    pub group_id: u32,
    /// Buckets.
    pub buckets: Vec<Bucket>,
}

impl GroupDesc {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let mut b = take_record(r, 0, 8)?;
        b.skip(2)?;
        let group_type = b.u8()?;
        b.skip(1)?;
        Ok(GroupDesc {
            group_type,
            group_id: b.u32()?,
            buckets: decode_buckets(b.rest())?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u16(0);
        buf.put_u8(self.group_type);
        zeros(buf, 1);
        buf.put_u32(self.group_id);
        encode_buckets(&self.buckets, buf);
        patch_len(buf, start, start);
    }
}

/// OFPMP_GROUP_FEATURES reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GroupFeatures {
    /// Bitmap of `OFPGT_*` values supported.
    pub types: u32,
    /// Bitmap of `OFPGFC_*` capabilities.
    pub capabilities: u32,
    /// Max groups for each type.
    pub max_groups: [u32; 4],
    /// Bitmaps of `OFPAT_*` supported, per type.
    pub actions: [u32; 4],
}

impl GroupFeatures {
    fn decode(b: &[u8]) -> Result<Self, Fail> {
        exact(b, 40)?;
        let mut r = Reader::new(b, bad_len("group features truncated"));
        Ok(GroupFeatures {
            types: r.u32()?,
            capabilities: r.u32()?,
            max_groups: [r.u32()?, r.u32()?, r.u32()?, r.u32()?],
            actions: [r.u32()?, r.u32()?, r.u32()?, r.u32()?],
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.types);
        buf.put_u32(self.capabilities);
        for v in self.max_groups.iter().chain(&self.actions) {
            buf.put_u32(*v);
        }
    }
}

/// One meter in an OFPMP_METER reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MeterStats {
    /// Meter id.
    pub meter_id: u32,
    /// Flows bound to the meter.
    pub flow_count: u32,
    /// Packets in input.
    pub packet_in_count: u64,
    /// Bytes in input.
    pub byte_in_count: u64,
    /// Time alive, seconds.
    pub duration_sec: u32,
    /// Time alive, nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
    /// Per-band counters.
    pub band_stats: Vec<Counters>,
}

impl MeterStats {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let mut b = take_record(r, 4, 40)?;
        let meter_id = b.u32()?;
        b.skip(8)?;
        Ok(MeterStats {
            meter_id,
            flow_count: b.u32()?,
            packet_in_count: b.u64()?,
            byte_in_count: b.u64()?,
            duration_sec: b.u32()?,
            duration_nsec: b.u32()?,
            band_stats: decode_counters(&mut b)?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u32(self.meter_id);
        buf.put_u16(0);
        zeros(buf, 6);
        buf.put_u32(self.flow_count);
        buf.put_u64(self.packet_in_count);
        buf.put_u64(self.byte_in_count);
        buf.put_u32(self.duration_sec);
        buf.put_u32(self.duration_nsec);
        encode_counters(&self.band_stats, buf);
        patch_u16(buf, start + 4, buf.len() - start);
    }
}

/// One meter in an OFPMP_METER_CONFIG reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeterConfig {
    /// `OFPMF_*` flags.
    pub flags: u16,
    /// Meter id.
    pub meter_id: u32,
    /// Bands.
    pub bands: Vec<MeterBand>,
}

impl MeterConfig {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let mut b = take_record(r, 0, 8)?;
        b.skip(2)?;
        Ok(MeterConfig {
            flags: b.u16()?,
            meter_id: b.u32()?,
            bands: decode_bands(b.rest())?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u16(0);
        buf.put_u16(self.flags);
        buf.put_u32(self.meter_id);
        encode_bands(&self.bands, buf);
        patch_len(buf, start, start);
    }
}

/// OFPMP_METER_FEATURES reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MeterFeatures {
    /// Maximum number of meters.
    pub max_meter: u32,
    /// Bitmap of `OFPMBT_*` values supported.
    pub band_types: u32,
    /// Bitmap of `OFPMF_*` flags.
    pub capabilities: u32,
    /// Maximum bands per meter.
    pub max_bands: u8,
    /// Maximum color value.
    pub max_color: u8,
}

impl MeterFeatures {
    fn decode(b: &[u8]) -> Result<Self, Fail> {
        exact(b, 16)?;
        let mut r = Reader::new(b, bad_len("meter features truncated"));
        Ok(MeterFeatures {
            max_meter: r.u32()?,
            band_types: r.u32()?,
            capabilities: r.u32()?,
            max_bands: r.u8()?,
            max_color: r.u8()?,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.max_meter);
        buf.put_u32(self.band_types);
        buf.put_u32(self.capabilities);
        buf.put_u8(self.max_bands);
        buf.put_u8(self.max_color);
        zeros(buf, 2);
    }
}

/// One table in an OFPMP_TABLE_FEATURES request or reply. Properties are
/// kept raw.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TableFeatures {
    /// Table id.
    pub table_id: u8,
    /// Table name.
    pub name: String,
    /// Bits of metadata the table can match.
    pub metadata_match: u64,
    /// Bits of metadata the table can write.
    pub metadata_write: u64,
    /// `OFPTC_*` bits.
    pub config: u32,
    /// Max number of entries supported.
    pub max_entries: u32,
    /// Table feature properties.
    pub properties: Vec<TableFeatureProp>,
}

/// A table feature property (`OFPTFPT_*`), kept raw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableFeatureProp {
    /// `OFPTFPT_*` type.
    pub prop_type: u16,
    /// Payload after the 4-byte header, without padding.
    pub data: Vec<u8>,
}

impl TableFeatures {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Fail> {
        let bad = Fail::new(
            ErrorCode::BAD_TABLE_FEATURES_LEN,
            "table features length invalid",
        );
        let mut b = take_record(r, 0, 64).map_err(|_| bad)?;
        b.skip(2)?;
        let table_id = b.u8()?;
        b.skip(5)?;
        let name = b.string(32)?;
        let metadata_match = b.u64()?;
        let metadata_write = b.u64()?;
        let config = b.u32()?;
        let max_entries = b.u32()?;
        let mut properties = Vec::new();
        while !b.is_empty() {
            let prop_type = b.u16().map_err(|_| bad)?;
            let len = usize::from(b.u16().map_err(|_| bad)?);
            if len < 4 {
                return Err(bad);
            }
            let data = b.bytes(len - 4).map_err(|_| bad)?.to_vec();
            b.skip(pad8(len) - len).map_err(|_| bad)?;
            properties.push(TableFeatureProp { prop_type, data });
        }
        Ok(TableFeatures {
            table_id,
            name,
            metadata_match,
            metadata_write,
            config,
            max_entries,
            properties,
        })
    }
    fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u16(0);
        buf.put_u8(self.table_id);
        zeros(buf, 5);
        put_string(buf, &self.name, 32);
        buf.put_u64(self.metadata_match);
        buf.put_u64(self.metadata_write);
        buf.put_u32(self.config);
        buf.put_u32(self.max_entries);
        for p in &self.properties {
            let ps = buf.len();
            buf.put_u16(p.prop_type);
            buf.put_u16(0);
            buf.put_slice(&p.data);
            patch_len(buf, ps + 2, ps);
            pad_to_8(buf, ps);
        }
        patch_len(buf, start, start);
    }
}
