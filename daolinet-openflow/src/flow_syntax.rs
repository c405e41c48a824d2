//! A readable flow syntax close to `ovs-ofctl`'s: `Display` for matches,
//! actions, instructions, FLOW_MODs and flow stats, and parsers for them.
//!
//! ```text
//! table=1,cookie=0x10,priority=100,idle_timeout=10,send_flow_rem,in_port=2,ip,nw_src=10.0.0.0/24 actions=set_field:aa:bb:cc:dd:ee:ff->dl_dst,output:3
//! ```
//!
//! Match fields use OVS names (`in_port`, `dl_src`, `dl_dst`, `dl_type`,
//! `nw_src`, `nw_dst`, `nw_proto`, `tcp_src`, `udp_dst`, `arp_op`, `arp_spa`,
//! ...) plus common aliases (`eth_src`, `ip_src`, `ipv4_dst`, `ip_proto`,
//! `tp_src`/`tp_dst` resolved by the preceding `nw_proto`), and the
//! shorthands `ip`, `ipv6`, `arp`, `tcp`, `udp`, `sctp`, `icmp`, `tcp6`,
//! `udp6`, `icmp6`... Masks are written `value/mask` (or `/prefix` for
//! addresses). Reserved ports print and parse by name (`LOCAL`,
//! `CONTROLLER`, `IN_PORT`, `FLOOD`, `ALL`, `TABLE`, `NORMAL`, `ANY`).
//!
//! Actions: `output:N`, `output(port=N,max_len=M)`, `CONTROLLER:max_len`,
//! `LOCAL`/`IN_PORT`/`FLOOD`/..., `copy_ttl_out`, `copy_ttl_in`,
//! `set_mpls_ttl:N`, `dec_mpls_ttl`, `push_vlan:0x8100`, `pop_vlan`
//! (`strip_vlan`), `push_mpls:0x8847`, `pop_mpls:0x0800`, `set_queue:N`,
//! `group:N`, `mod_nw_ttl:N`, `dec_ttl`, `set_field:VALUE->FIELD`,
//! `push_pbb:0x88e7`, `pop_pbb`, `experimenter(ID,HEX)`,
//! `unknown_action(TYPE,HEX)`.
//!
//! Instructions: bare actions form the apply_actions instruction;
//! `write_actions(...)`, `apply_actions(...)`, `clear_actions`,
//! `goto_table:N`, `write_metadata:V/M`, `meter:N`; an empty list is `drop`.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use crate::action::Action;
use crate::consts::*;
use crate::error::{ErrorCode, Fail};
use crate::instruction::Instruction;
use crate::message::flow::FlowMod;
use crate::multipart::FlowStats;
use crate::oxm::{MacAddr, Match, OxmField, RawOxm, BASIC_FIELDS};
use crate::wire::Reader;

/// A flow-syntax parse error, with a message saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlowParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, FlowParseError> {
    Err(FlowParseError(msg.into()))
}

const RESERVED_PORTS: &[(u32, &str)] = &[
    (OFPP_IN_PORT, "IN_PORT"),
    (OFPP_TABLE, "TABLE"),
    (OFPP_NORMAL, "NORMAL"),
    (OFPP_FLOOD, "FLOOD"),
    (OFPP_ALL, "ALL"),
    (OFPP_CONTROLLER, "CONTROLLER"),
    (OFPP_LOCAL, "LOCAL"),
    (OFPP_ANY, "ANY"),
];

/// The name of a reserved port (`LOCAL`, `CONTROLLER`...).
pub fn port_name(port: u32) -> Option<&'static str> {
    RESERVED_PORTS
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, n)| *n)
}

/// A port for display: reserved name or number.
pub fn fmt_port(port: u32) -> String {
    port_name(port).map_or_else(|| port.to_string(), str::to_string)
}

/// Parse a port number or reserved port name (case-insensitive).
pub fn parse_port(s: &str) -> Result<u32, FlowParseError> {
    if let Some((p, _)) = RESERVED_PORTS
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(s))
    {
        return Ok(*p);
    }
    let v = parse_u64(s)?;
    u32::try_from(v).or_else(|_| err(format!("port {s:?} out of range")))
}

fn parse_u64(s: &str) -> Result<u64, FlowParseError> {
    let s = s.trim();
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        s.parse::<u64>()
    };
    r.or_else(|_| err(format!("invalid number {s:?}")))
}

fn parse_uint<T: TryFrom<u64>>(s: &str) -> Result<T, FlowParseError> {
    let v = parse_u64(s)?;
    T::try_from(v).or_else(|_| err(format!("number {s:?} out of range")))
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex(s: &str) -> Result<Vec<u8>, FlowParseError> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return err(format!("odd-length hex string {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| FlowParseError(format!("invalid hex string {s:?}")))
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Mac,
    V4,
    V6,
}

fn kind(field: u8) -> Kind {
    match field {
        3 | 4 | 24 | 25 | 32 | 33 => Kind::Mac,
        11 | 12 | 22 | 23 => Kind::V4,
        26 | 27 | 31 => Kind::V6,
        _ => Kind::Int,
    }
}

fn be_int(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x))
}

fn prefix_len(mask: &[u8]) -> Option<u32> {
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let bits = (mask.len() * 8) as u32;
    // Contiguous from the top: all-ones bytes, then one partial byte, then zeros.
    let expected: Vec<u8> = (0..mask.len())
        .map(|i| {
            let start = (i * 8) as u32;
            if ones >= start + 8 {
                0xff
            } else if ones <= start {
                0
            } else {
                0xffu8 << (8 - (ones - start))
            }
        })
        .collect();
    (expected == mask && ones <= bits).then_some(ones)
}

fn fmt_value(field: u8, hexfmt: bool, v: &[u8], m: Option<&[u8]>) -> String {
    match kind(field) {
        Kind::Mac => {
            let mac = |b: &[u8]| MacAddr(<[u8; 6]>::try_from(b).unwrap_or_default()).to_string();
            match m {
                Some(m) => format!("{}/{}", mac(v), mac(m)),
                None => mac(v),
            }
        }
        Kind::V4 => {
            let ip = |b: &[u8]| Ipv4Addr::from(<[u8; 4]>::try_from(b).unwrap_or_default());
            match m {
                Some(m) => match prefix_len(m) {
                    Some(n) => format!("{}/{n}", ip(v)),
                    None => format!("{}/{}", ip(v), ip(m)),
                },
                None => ip(v).to_string(),
            }
        }
        Kind::V6 => {
            let ip = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or_default());
            match m {
                Some(m) => match prefix_len(m) {
                    Some(n) => format!("{}/{n}", ip(v)),
                    None => format!("{}/{}", ip(v), ip(m)),
                },
                None => ip(v).to_string(),
            }
        }
        Kind::Int => {
            let x = be_int(v);
            match m {
                Some(m) => format!("{x:#x}/{:#x}", be_int(m)),
                None if field == 0 || field == 1 => fmt_port(x as u32),
                None if field == 5 => format!("0x{x:04x}"),
                None if hexfmt => format!("{x:#x}"),
                None => x.to_string(),
            }
        }
    }
}

/// Split an encoded field into (field number, value bytes, mask bytes).
fn field_parts(f: &OxmField) -> (BytesMut, usize) {
    let mut b = BytesMut::with_capacity(f.encoded_len());
    f.encode(&mut b);
    let len = f.info().map_or(0, |i| i.len);
    (b, len)
}

fn fmt_field_value(f: &OxmField) -> String {
    match f {
        OxmField::Raw(r) => fmt_raw(r),
        _ => {
            let (b, len) = field_parts(f);
            let (num, hm) = (f.id().1, f.id().2);
            let v = b.get(4..4 + len).unwrap_or_default();
            let m = if hm {
                b.get(4 + len..4 + 2 * len)
            } else {
                None
            };
            let hexfmt = f.info().is_some_and(|i| i.hex);
            fmt_value(num, hexfmt, v, m)
        }
    }
}

fn fmt_raw(r: &RawOxm) -> String {
    format!(
        "oxm({:#x},{},{},{})",
        r.class,
        r.field,
        u8::from(r.has_mask),
        hex(&r.payload)
    )
}

impl fmt::Display for OxmField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.info()) {
            (OxmField::Raw(r), _) => f.write_str(&fmt_raw(r)),
            (_, Some(i)) => write!(f, "{}={}", i.name, fmt_field_value(self)),
            (_, None) => f.write_str("?"),
        }
    }
}

const SHORTHANDS: &[(&str, u16, Option<u8>)] = &[
    ("tcp", 0x0800, Some(6)),
    ("udp", 0x0800, Some(17)),
    ("sctp", 0x0800, Some(132)),
    ("icmp", 0x0800, Some(1)),
    ("tcp6", 0x86dd, Some(6)),
    ("udp6", 0x86dd, Some(17)),
    ("sctp6", 0x86dd, Some(132)),
    ("icmp6", 0x86dd, Some(58)),
    ("ip", 0x0800, None),
    ("ipv6", 0x86dd, None),
    ("arp", 0x0806, None),
    ("rarp", 0x8035, None),
    ("mpls", 0x8847, None),
    ("mplsm", 0x8848, None),
];

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        let fields = &self.fields;
        while let Some(field) = fields.get(i) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if let OxmField::EthType(t, None) = field {
                let next = match fields.get(i + 1) {
                    Some(OxmField::IpProto(p, None)) => Some(*p),
                    _ => None,
                };
                if let Some((name, _, _)) = SHORTHANDS
                    .iter()
                    .find(|(_, et, p)| et == t && p.is_some() && *p == next)
                {
                    f.write_str(name)?;
                    i += 2;
                    continue;
                }
                if let Some((name, _, _)) =
                    SHORTHANDS.iter().find(|(_, et, p)| et == t && p.is_none())
                {
                    f.write_str(name)?;
                    i += 1;
                    continue;
                }
            }
            write!(f, "{field}")?;
            i += 1;
        }
        Ok(())
    }
}

fn field_number(name: &str, last_proto: Option<u8>) -> Option<u8> {
    let alias = match name {
        "eth_dst" => "dl_dst",
        "eth_src" => "dl_src",
        "eth_type" => "dl_type",
        "dl_vlan_pcp" => "vlan_pcp",
        "ip_ecn" => "nw_ecn",
        "ip_proto" => "nw_proto",
        "ip_src" | "ipv4_src" => "nw_src",
        "ip_dst" | "ipv4_dst" => "nw_dst",
        "icmpv4_type" => "icmp_type",
        "icmpv4_code" => "icmp_code",
        "ipv6_flabel" => "ipv6_label",
        "ipv6_nd_target" => "nd_target",
        "ipv6_nd_sll" => "nd_sll",
        "ipv6_nd_tll" => "nd_tll",
        "tunnel_id" => "tun_id",
        "tp_src" | "tp_dst" => {
            let proto = match last_proto {
                Some(6) => "tcp",
                Some(17) => "udp",
                Some(132) => "sctp",
                _ => return None,
            };
            let n = format!("{proto}_{}", &name[3..]);
            return BASIC_FIELDS.iter().find(|i| i.name == n).map(|i| i.field);
        }
        other => other,
    };
    BASIC_FIELDS
        .iter()
        .find(|i| i.name == alias)
        .map(|i| i.field)
}

fn parse_value_bytes(field: u8, len: usize, s: &str) -> Result<Vec<u8>, FlowParseError> {
    Ok(match kind(field) {
        Kind::Mac => MacAddr::from_str(s)
            .map_err(|e| FlowParseError(e.to_string()))?
            .0
            .to_vec(),
        Kind::V4 => Ipv4Addr::from_str(s)
            .or_else(|_| err(format!("invalid IPv4 address {s:?}")))?
            .octets()
            .to_vec(),
        Kind::V6 => Ipv6Addr::from_str(s)
            .or_else(|_| err(format!("invalid IPv6 address {s:?}")))?
            .octets()
            .to_vec(),
        Kind::Int => {
            let v = if field <= 1 {
                u64::from(parse_port(s)?)
            } else {
                parse_u64(s)?
            };
            if len < 8 && v >> (len * 8) != 0 {
                return err(format!("value {s:?} does not fit in {len} bytes"));
            }
            let b = v.to_be_bytes();
            b.get(8 - len..).unwrap_or_default().to_vec()
        }
    })
}

fn parse_mask_bytes(field: u8, len: usize, s: &str) -> Result<Vec<u8>, FlowParseError> {
    let is_addr = matches!(kind(field), Kind::V4 | Kind::V6);
    if is_addr && !s.contains(['.', ':']) {
        let n: usize = s
            .parse()
            .or_else(|_| err(format!("invalid prefix length {s:?}")))?;
        if n > len * 8 {
            return err(format!("prefix length {n} too long"));
        }
        return Ok((0..len)
            .map(|i| {
                let start = i * 8;
                if n >= start + 8 {
                    0xff
                } else if n <= start {
                    0
                } else {
                    0xffu8 << (8 - (n - start))
                }
            })
            .collect());
    }
    if field <= 1 {
        let v = parse_u64(s)?;
        return Ok(v.to_be_bytes().get(4..).unwrap_or_default().to_vec());
    }
    parse_value_bytes(field, len, s)
}

/// Parse `VALUE[/MASK]` for basic field `field`.
fn parse_field_value(field: u8, s: &str) -> Result<OxmField, FlowParseError> {
    let info = BASIC_FIELDS
        .get(usize::from(field))
        .ok_or_else(|| FlowParseError(format!("unknown field {field}")))?;
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    let mut payload = parse_value_bytes(field, info.len, v.trim())?;
    if let Some(m) = m {
        payload.extend(parse_mask_bytes(field, info.len, m.trim())?);
    }
    let mut b = BytesMut::with_capacity(4 + payload.len());
    b.put_u32(
        (u32::from(OFPXMC_OPENFLOW_BASIC) << 16)
            | (u32::from(field) << 9)
            | (u32::from(m.is_some()) << 8)
            | payload.len() as u32,
    );
    b.put_slice(&payload);
    let fail = Fail::new(ErrorCode::BAD_MATCH_LEN, "bad field");
    OxmField::decode(&mut Reader::new(&b, fail), fail)
        .or_else(|_| err(format!("invalid value {s:?} for {}", info.name)))
}

fn parse_raw_oxm(s: &str) -> Result<OxmField, FlowParseError> {
    let inner = s
        .strip_prefix("oxm(")
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| FlowParseError(format!("invalid raw OXM {s:?}")))?;
    let parts: Vec<&str> = inner.split(',').collect();
    let [class, field, hm, payload] = parts.as_slice() else {
        return err(format!("raw OXM needs 4 parts: {s:?}"));
    };
    Ok(OxmField::Raw(RawOxm {
        class: parse_uint(class)?,
        field: parse_uint::<u8>(field)? & 0x7f,
        has_mask: parse_u64(hm)? != 0,
        payload: unhex(payload)?,
    }))
}

/// Parse one `name=value[/mask]` match field (no shorthands).
pub fn parse_field(s: &str) -> Result<OxmField, FlowParseError> {
    if s.starts_with("oxm(") {
        return parse_raw_oxm(s);
    }
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| FlowParseError(format!("expected name=value, got {s:?}")))?;
    let num = field_number(name.trim(), None)
        .ok_or_else(|| FlowParseError(format!("unknown field {name:?}")))?;
    parse_field_value(num, value)
}

/// Split on top-level separators (commas, and whitespace when `ws`), keeping
/// parenthesised groups together.
fn split_top(s: &str, ws: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            c if ws && c.is_whitespace() && depth == 0 => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Parse a match token list into `m`, returning tokens that are not match fields.
fn parse_match_tokens<'a>(
    tokens: &[&'a str],
    m: &mut Match,
) -> Result<Vec<&'a str>, FlowParseError> {
    let mut others = Vec::new();
    let mut last_proto: Option<u8> = None;
    for &t in tokens {
        if let Some((_, et, p)) = SHORTHANDS.iter().find(|(n, _, _)| *n == t) {
            m.fields.push(OxmField::EthType(*et, None));
            if let Some(p) = p {
                m.fields.push(OxmField::IpProto(*p, None));
                last_proto = Some(*p);
            }
            continue;
        }
        if t.starts_with("oxm(") {
            m.fields.push(parse_raw_oxm(t)?);
            continue;
        }
        if let Some(v) = t.strip_prefix("dl_vlan=") {
            // OVS's dl_vlan is the VLAN id without OFPVID_PRESENT.
            let vid: u16 = parse_uint(v)?;
            if vid > 0xfff {
                return err(format!("dl_vlan {vid} out of range"));
            }
            m.fields.push(OxmField::VlanVid(vid | OFPVID_PRESENT, None));
            continue;
        }
        match t.split_once('=') {
            Some((name, value)) => match field_number(name, last_proto) {
                Some(num) => {
                    let f = parse_field_value(num, value)?;
                    if let OxmField::IpProto(p, None) = f {
                        last_proto = Some(p);
                    }
                    m.fields.push(f);
                }
                None if name == "tp_src" || name == "tp_dst" => {
                    return err(format!("{name} needs tcp, udp or sctp before it"))
                }
                None => others.push(t),
            },
            None => others.push(t),
        }
    }
    Ok(others)
}

impl FromStr for Match {
    type Err = FlowParseError;
    /// Parse `in_port=1,ip,nw_dst=10.0.0.0/8` (commas or spaces between fields).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut m = Match::new();
        let others = parse_match_tokens(&split_top(s, true), &mut m)?;
        if let Some(t) = others.first() {
            return err(format!("unknown match field {t:?}"));
        }
        Ok(m)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output { port, max_len } => {
                if *port == OFPP_CONTROLLER {
                    write!(f, "CONTROLLER:{max_len}")
                } else if *max_len == 0 {
                    match port_name(*port) {
                        Some(n) => f.write_str(n),
                        None => write!(f, "output:{port}"),
                    }
                } else {
                    write!(f, "output(port={},max_len={max_len})", fmt_port(*port))
                }
            }
            Action::CopyTtlOut => f.write_str("copy_ttl_out"),
            Action::CopyTtlIn => f.write_str("copy_ttl_in"),
            Action::SetMplsTtl(t) => write!(f, "set_mpls_ttl:{t}"),
            Action::DecMplsTtl => f.write_str("dec_mpls_ttl"),
            Action::PushVlan(e) => write!(f, "push_vlan:{e:#06x}"),
            Action::PopVlan => f.write_str("pop_vlan"),
            Action::PushMpls(e) => write!(f, "push_mpls:{e:#06x}"),
            Action::PopMpls(e) => write!(f, "pop_mpls:{e:#06x}"),
            Action::SetQueue(q) => write!(f, "set_queue:{q}"),
            Action::Group(g) => write!(f, "group:{g}"),
            Action::SetNwTtl(t) => write!(f, "mod_nw_ttl:{t}"),
            Action::DecNwTtl => f.write_str("dec_ttl"),
            Action::SetField(OxmField::Raw(r)) => write!(f, "set_field:{}", fmt_raw(r)),
            Action::SetField(field) => write!(
                f,
                "set_field:{}->{}",
                fmt_field_value(field),
                field.info().map_or("?", |i| i.name)
            ),
            Action::PushPbb(e) => write!(f, "push_pbb:{e:#06x}"),
            Action::PopPbb => f.write_str("pop_pbb"),
            Action::Experimenter { experimenter, data } => {
                write!(f, "experimenter({experimenter:#x},{})", hex(data))
            }
            Action::Unknown { action_type, data } => {
                write!(f, "unknown_action({action_type},{})", hex(data))
            }
        }
    }
}

fn two_args(s: &str) -> Result<(&str, &str), FlowParseError> {
    s.split_once(',')
        .ok_or_else(|| FlowParseError(format!("expected two arguments in {s:?}")))
}

fn paren_arg<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    s.strip_prefix(name)
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.strip_suffix(')'))
}

impl FromStr for Action {
    type Err = FlowParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(inner) = paren_arg(s, "output") {
            let mut port = None;
            let mut max_len = 0u16;
            for kv in inner.split(',') {
                match kv.trim().split_once('=') {
                    Some(("port", v)) => port = Some(parse_port(v)?),
                    Some(("max_len", v)) => max_len = parse_uint(v)?,
                    _ => return err(format!("invalid output argument {kv:?}")),
                }
            }
            let port = port.ok_or_else(|| FlowParseError("output(...) needs port=".into()))?;
            return Ok(Action::Output { port, max_len });
        }
        if let Some(inner) = paren_arg(s, "controller") {
            let v = inner
                .strip_prefix("max_len=")
                .ok_or_else(|| FlowParseError(format!("invalid controller action {s:?}")))?;
            return Ok(Action::controller(parse_uint(v)?));
        }
        if let Some(inner) = paren_arg(s, "experimenter") {
            let (id, data) = two_args(inner)?;
            return Ok(Action::Experimenter {
                experimenter: parse_uint(id)?,
                data: unhex(data)?,
            });
        }
        if let Some(inner) = paren_arg(s, "unknown_action") {
            let (t, data) = two_args(inner)?;
            return Ok(Action::Unknown {
                action_type: parse_uint(t)?,
                data: unhex(data)?,
            });
        }
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let need = || arg.ok_or_else(|| FlowParseError(format!("{name} needs an argument")));
        let lower = name.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "output" => Action::output(parse_port(need()?)?),
            "controller" => match arg {
                Some(a) => Action::controller(parse_uint(a)?),
                None => Action::controller(OFPCML_NO_BUFFER),
            },
            "in_port" | "table" | "normal" | "flood" | "all" | "local" | "any" if arg.is_none() => {
                Action::output(parse_port(name)?)
            }
            "copy_ttl_out" => Action::CopyTtlOut,
            "copy_ttl_in" => Action::CopyTtlIn,
            "set_mpls_ttl" => Action::SetMplsTtl(parse_uint(need()?)?),
            "dec_mpls_ttl" => Action::DecMplsTtl,
            "push_vlan" => Action::PushVlan(parse_uint(need()?)?),
            "pop_vlan" | "strip_vlan" => Action::PopVlan,
            "push_mpls" => Action::PushMpls(parse_uint(need()?)?),
            "pop_mpls" => Action::PopMpls(parse_uint(need()?)?),
            "set_queue" => Action::SetQueue(parse_uint(need()?)?),
            "group" => Action::Group(parse_uint(need()?)?),
            "mod_nw_ttl" | "set_nw_ttl" => Action::SetNwTtl(parse_uint(need()?)?),
            "dec_ttl" | "dec_nw_ttl" => Action::DecNwTtl,
            "push_pbb" => Action::PushPbb(parse_uint(need()?)?),
            "pop_pbb" => Action::PopPbb,
            "set_field" => {
                // Everything after the first ':' (values contain ':').
                let rest = s.get("set_field:".len()..).unwrap_or_default();
                if rest.starts_with("oxm(") {
                    return Ok(Action::SetField(parse_raw_oxm(rest)?));
                }
                let (value, field) = rest.rsplit_once("->").ok_or_else(|| {
                    FlowParseError(format!("set_field needs VALUE->FIELD: {s:?}"))
                })?;
                let num = field_number(field.trim(), None)
                    .ok_or_else(|| FlowParseError(format!("unknown field {field:?}")))?;
                Action::SetField(parse_field_value(num, value)?)
            }
            _ if arg.is_none() && s.bytes().all(|b| b.is_ascii_digit()) => {
                Action::output(parse_port(s)?)
            }
            _ => return err(format!("unknown action {s:?}")),
        })
    }
}

fn join_actions(a: &[Action]) -> String {
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Display adapter for an instruction list (`drop` when empty).
pub struct Instructions<'a>(pub &'a [Instruction]);

impl fmt::Display for Instructions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let mut bare_used = false;
        for i in self.0 {
            parts.push(match i {
                Instruction::ApplyActions(a) if !a.is_empty() && !bare_used => {
                    bare_used = true;
                    join_actions(a)
                }
                Instruction::ApplyActions(a) => format!("apply_actions({})", join_actions(a)),
                Instruction::WriteActions(a) => format!("write_actions({})", join_actions(a)),
                Instruction::ClearActions => "clear_actions".into(),
                Instruction::GotoTable(t) => format!("goto_table:{t}"),
                Instruction::WriteMetadata { metadata, mask } => {
                    format!("write_metadata:{metadata:#x}/{mask:#x}")
                }
                Instruction::Meter(m) => format!("meter:{m}"),
                Instruction::Experimenter { experimenter, data } => {
                    format!("experimenter_inst({experimenter:#x},{})", hex(data))
                }
                Instruction::Unknown {
                    instruction_type,
                    data,
                } => format!("unknown_inst({instruction_type},{})", hex(data)),
            });
        }
        if parts.is_empty() {
            f.write_str("drop")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

fn parse_action_list(s: &str) -> Result<Vec<Action>, FlowParseError> {
    split_top(s, false)
        .into_iter()
        .filter(|t| *t != "drop")
        .map(Action::from_str)
        .collect()
}

/// Parse an instruction list (the part after `actions=`).
pub fn parse_instructions(s: &str) -> Result<Vec<Instruction>, FlowParseError> {
    let mut out: Vec<Instruction> = Vec::new();
    let mut bare: Option<usize> = None;
    for t in split_top(s, false) {
        if t == "drop" {
            continue;
        }
        if let Some(inner) = paren_arg(t, "write_actions") {
            out.push(Instruction::WriteActions(parse_action_list(inner)?));
        } else if let Some(inner) = paren_arg(t, "apply_actions") {
            out.push(Instruction::ApplyActions(parse_action_list(inner)?));
        } else if let Some(inner) = paren_arg(t, "experimenter_inst") {
            let (id, data) = two_args(inner)?;
            out.push(Instruction::Experimenter {
                experimenter: parse_uint(id)?,
                data: unhex(data)?,
            });
        } else if let Some(inner) = paren_arg(t, "unknown_inst") {
            let (ty, data) = two_args(inner)?;
            out.push(Instruction::Unknown {
                instruction_type: parse_uint(ty)?,
                data: unhex(data)?,
            });
        } else if t == "clear_actions" {
            out.push(Instruction::ClearActions);
        } else if let Some(v) = t.strip_prefix("goto_table:") {
            out.push(Instruction::GotoTable(parse_uint(v)?));
        } else if let Some(v) = t.strip_prefix("meter:") {
            out.push(Instruction::Meter(parse_uint(v)?));
        } else if let Some(v) = t.strip_prefix("write_metadata:") {
            let (m, mask) = match v.split_once('/') {
                Some((m, k)) => (parse_u64(m)?, parse_u64(k)?),
                None => (parse_u64(v)?, u64::MAX),
            };
            out.push(Instruction::WriteMetadata { metadata: m, mask });
        } else {
            let a = Action::from_str(t)?;
            match bare.and_then(|i| out.get_mut(i)) {
                Some(Instruction::ApplyActions(v)) => v.push(a),
                _ => {
                    bare = Some(out.len());
                    out.push(Instruction::ApplyActions(vec![a]));
                }
            }
        }
    }
    Ok(out)
}

const FLAG_NAMES: &[(u16, &str)] = &[
    (OFPFF_SEND_FLOW_REM, "send_flow_rem"),
    (OFPFF_CHECK_OVERLAP, "check_overlap"),
    (OFPFF_RESET_COUNTS, "reset_counts"),
    (OFPFF_NO_PKT_COUNTS, "no_packet_counts"),
    (OFPFF_NO_BYT_COUNTS, "no_byte_counts"),
];

fn push_flags(parts: &mut Vec<String>, flags: u16) {
    let mut rest = flags;
    for (bit, name) in FLAG_NAMES {
        if flags & bit != 0 {
            parts.push((*name).to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("flags={rest:#x}"));
    }
}

/// Shows the flow in `ovs-ofctl add-flow` syntax; the command
/// (add/modify/delete) is not shown.
impl fmt::Display for FlowMod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.table_id != 0 {
            parts.push(format!("table={}", self.table_id));
        }
        if self.cookie_mask != 0 {
            parts.push(format!("cookie={:#x}/{:#x}", self.cookie, self.cookie_mask));
        } else if self.cookie != 0 {
            parts.push(format!("cookie={:#x}", self.cookie));
        }
        if self.priority != OFP_DEFAULT_PRIORITY {
            parts.push(format!("priority={}", self.priority));
        }
        if self.idle_timeout != 0 {
            parts.push(format!("idle_timeout={}", self.idle_timeout));
        }
        if self.hard_timeout != 0 {
            parts.push(format!("hard_timeout={}", self.hard_timeout));
        }
        if self.buffer_id != OFP_NO_BUFFER {
            parts.push(format!("buffer_id={}", self.buffer_id));
        }
        if self.out_port != OFPP_ANY {
            parts.push(format!("out_port={}", fmt_port(self.out_port)));
        }
        if self.out_group != OFPG_ANY {
            parts.push(format!("out_group={}", self.out_group));
        }
        push_flags(&mut parts, self.flags);
        let m = self.match_.to_string();
        if !m.is_empty() {
            parts.push(m);
        }
        if !parts.is_empty() {
            write!(f, "{} ", parts.join(","))?;
        }
        write!(f, "actions={}", Instructions(&self.instructions))
    }
}

/// Split `s` at a top-level `actions=` token.
fn split_actions(s: &str) -> (&str, Option<&str>) {
    let mut depth = 0i32;
    let mut at_start = true;
    for (i, c) in s.char_indices() {
        if at_start && depth == 0 && s[i..].starts_with("actions=") {
            return (&s[..i], Some(&s[i + "actions=".len()..]));
        }
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        at_start = c == ',' || c.is_whitespace();
    }
    (s, None)
}

/// Parses `ovs-ofctl add-flow` style text into an OFPFC_ADD FLOW_MOD
/// (change [`FlowMod::command`] for other commands). A missing `actions=`
/// means no instructions (drop).
impl FromStr for FlowMod {
    type Err = FlowParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (head, acts) = split_actions(s);
        let mut fm = FlowMod::default();
        let tokens = split_top(head, true);
        let others = parse_match_tokens(&tokens, &mut fm.match_)?;
        for t in others {
            if let Some((bit, _)) = FLAG_NAMES.iter().find(|(_, n)| *n == t) {
                fm.flags |= bit;
                continue;
            }
            let (k, v) = t
                .split_once('=')
                .ok_or_else(|| FlowParseError(format!("unknown keyword {t:?}")))?;
            match k {
                "table" => fm.table_id = parse_uint(v)?,
                "cookie" => match v.split_once('/') {
                    Some((c, m)) => {
                        fm.cookie = parse_u64(c)?;
                        fm.cookie_mask = if m.trim() == "-1" {
                            u64::MAX
                        } else {
                            parse_u64(m)?
                        };
                    }
                    None => fm.cookie = parse_u64(v)?,
                },
                "priority" => fm.priority = parse_uint(v)?,
                "idle_timeout" => fm.idle_timeout = parse_uint(v)?,
                "hard_timeout" => fm.hard_timeout = parse_uint(v)?,
                "buffer_id" => fm.buffer_id = parse_uint(v)?,
                "out_port" => fm.out_port = parse_port(v)?,
                "out_group" => fm.out_group = parse_uint(v)?,
                "flags" => fm.flags |= parse_uint::<u16>(v)?,
                _ => return err(format!("unknown field or keyword {k:?}")),
            }
        }
        if let Some(a) = acts {
            fm.instructions = parse_instructions(a)?;
        }
        Ok(fm)
    }
}

/// Shows a flow like `ovs-ofctl dump-flows` does.
impl fmt::Display for FlowStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cookie={:#x}, duration={}.{:03}s, table={}, n_packets={}, n_bytes={}, ",
            self.cookie,
            self.duration_sec,
            self.duration_nsec / 1_000_000,
            self.table_id,
            self.packet_count,
            self.byte_count
        )?;
        if self.idle_timeout != 0 {
            write!(f, "idle_timeout={}, ", self.idle_timeout)?;
        }
        if self.hard_timeout != 0 {
            write!(f, "hard_timeout={}, ", self.hard_timeout)?;
        }
        let mut parts = Vec::new();
        push_flags(&mut parts, self.flags);
        if self.priority != OFP_DEFAULT_PRIORITY {
            parts.push(format!("priority={}", self.priority));
        }
        let m = self.match_.to_string();
        if !m.is_empty() {
            parts.push(m);
        }
        if !parts.is_empty() {
            write!(f, "{} ", parts.join(","))?;
        }
        write!(f, "actions={}", Instructions(&self.instructions))
    }
}
