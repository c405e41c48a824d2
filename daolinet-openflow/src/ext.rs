//! DaoliNet's own OpenFlow messages (OFPT_EXPERIMENTER with
//! [`EXPERIMENTER_ID`]) between `daolinet-agent` and the controller. An
//! Open vSwitch host never sends them, and the controller sends them only
//! to a switch that introduced itself with [`Ext::AgentHello`], so an
//! ordinary OpenFlow switch never sees one.
//!
//! - [`Ext::AgentHello`] (agent -> controller, after its FEATURES_REPLY):
//!   "I apply port sources and report datapath drops".
//! - [`Ext::PortSources`] (controller -> agent): the whole set of container
//!   ports of the host with the only (MAC, IPv4) source each may send from
//!   (the agent turns anti-spoofing on for them, off for the others).
//! - [`Ext::DropSample`] (agent -> controller): a packet the datapath
//!   dropped (sampled and rate-limited by the datapath), with its reason,
//!   ingress port and first bytes.
//!
//! Encoding, after the experimenter header (big endian):
//! - `PortSources`: `count: u32`, then per port `ofport: u32, mac: [u8; 6],
//!   pad: [u8; 2], ipv4: [u8; 4]`;
//! - `DropSample`: `in_port: u32, pkt_len: u32, reason_len: u8, reason,
//!   data` (the rest).

use crate::ExperimenterMsg;

/// The experimenter id of DaoliNet's messages (`0x00DA0117`: an id outside
/// the registered OUIs' range in use by the switches we drive).
pub const EXPERIMENTER_ID: u32 = 0x00da_0117;

const T_AGENT_HELLO: u32 = 1;
const T_PORT_SOURCES: u32 = 2;
const T_DROP_SAMPLE: u32 = 3;

/// Most ports a [`Ext::PortSources`] carries (a message stays < 64 KiB).
pub const MAX_SOURCES: usize = 4000;
/// Most bytes of a dropped packet a [`Ext::DropSample`] carries.
pub const MAX_SAMPLE_DATA: usize = 256;

/// A container port's only source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSource {
    /// OpenFlow port.
    pub ofport: u32,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its IPv4 address.
    pub ipv4: [u8; 4],
}

/// A dropped packet the datapath sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSample {
    /// Ingress OpenFlow port.
    pub in_port: u32,
    /// Length on the wire.
    pub pkt_len: u32,
    /// The datapath's drop reason (`spoofed_source`, `policy_drop`...).
    pub reason: String,
    /// The first bytes of the packet.
    pub data: Vec<u8>,
}

/// One of DaoliNet's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ext {
    /// The switch is a DaoliNet agent.
    AgentHello,
    /// Every container port of the host with its source.
    PortSources(Vec<PortSource>),
    /// A sampled datapath drop.
    DropSample(DropSample),
}

/// Why an experimenter message is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtError {
    /// Another experimenter's message.
    #[error("experimenter {0:#010x} is not DaoliNet's")]
    Foreign(u32),
    /// Our id, a type we do not know.
    #[error("unknown DaoliNet message type {0}")]
    UnknownType(u32),
    /// Our id and type, a body that does not parse.
    #[error("malformed DaoliNet message: {0}")]
    Malformed(&'static str),
}

impl Ext {
    /// As an OFPT_EXPERIMENTER body.
    pub fn to_message(&self) -> ExperimenterMsg {
        let (exp_type, data) = match self {
            Ext::AgentHello => (T_AGENT_HELLO, Vec::new()),
            Ext::PortSources(v) => {
                let v = &v[..v.len().min(MAX_SOURCES)];
                let mut d = Vec::with_capacity(4 + 16 * v.len());
                d.extend_from_slice(&(v.len() as u32).to_be_bytes());
                for s in v {
                    d.extend_from_slice(&s.ofport.to_be_bytes());
                    d.extend_from_slice(&s.mac);
                    d.extend_from_slice(&[0, 0]);
                    d.extend_from_slice(&s.ipv4);
                }
                (T_PORT_SOURCES, d)
            }
            Ext::DropSample(s) => {
                let reason = &s.reason.as_bytes()[..s.reason.len().min(255)];
                let data = &s.data[..s.data.len().min(MAX_SAMPLE_DATA)];
                let mut d = Vec::with_capacity(9 + reason.len() + data.len());
                d.extend_from_slice(&s.in_port.to_be_bytes());
                d.extend_from_slice(&s.pkt_len.to_be_bytes());
                d.push(reason.len() as u8);
                d.extend_from_slice(reason);
                d.extend_from_slice(data);
                (T_DROP_SAMPLE, d)
            }
        };
        ExperimenterMsg {
            experimenter: EXPERIMENTER_ID,
            exp_type,
            data,
        }
    }

    /// One of ours, from an OFPT_EXPERIMENTER body.
    pub fn from_message(m: &ExperimenterMsg) -> Result<Ext, ExtError> {
        if m.experimenter != EXPERIMENTER_ID {
            return Err(ExtError::Foreign(m.experimenter));
        }
        let d = &m.data[..];
        let u32_at = |i: usize| -> Option<u32> {
            d.get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match m.exp_type {
            T_AGENT_HELLO => Ok(Ext::AgentHello),
            T_PORT_SOURCES => {
                let n =
                    u32_at(0).ok_or(ExtError::Malformed("port sources without a count"))? as usize;
                if n > MAX_SOURCES || d.len() != 4 + 16 * n {
                    return Err(ExtError::Malformed("port sources: count and length differ"));
                }
                let v = d[4..]
                    .chunks_exact(16)
                    .map(|c| PortSource {
                        ofport: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                        mac: [c[4], c[5], c[6], c[7], c[8], c[9]],
                        ipv4: [c[12], c[13], c[14], c[15]],
                    })
                    .collect();
                Ok(Ext::PortSources(v))
            }
            T_DROP_SAMPLE => {
                let (Some(in_port), Some(pkt_len), Some(&rl)) = (u32_at(0), u32_at(4), d.get(8))
                else {
                    return Err(ExtError::Malformed("drop sample truncated"));
                };
                let rest = &d[9..];
                let rl = usize::from(rl);
                if rest.len() < rl {
                    return Err(ExtError::Malformed("drop sample reason truncated"));
                }
                let reason = std::str::from_utf8(&rest[..rl])
                    .map_err(|_| ExtError::Malformed("drop sample reason is not UTF-8"))?;
                Ok(Ext::DropSample(DropSample {
                    in_port,
                    pkt_len,
                    reason: reason.to_string(),
                    data: rest[rl..rest.len().min(rl + MAX_SAMPLE_DATA)].to_vec(),
                }))
            }
            t => Err(ExtError::UnknownType(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_through_the_wire() {
        let all = [
            Ext::AgentHello,
            Ext::PortSources(vec![]),
            Ext::PortSources(vec![
                PortSource {
                    ofport: 3,
                    mac: [2, 0, 0, 0, 0, 9],
                    ipv4: [10, 1, 0, 2],
                },
                PortSource {
                    ofport: 70000,
                    mac: [2, 1, 2, 3, 4, 5],
                    ipv4: [10, 2, 0, 3],
                },
            ]),
            Ext::DropSample(DropSample {
                in_port: 4,
                pkt_len: 98,
                reason: "spoofed_source".into(),
                data: vec![1, 2, 3],
            }),
        ];
        for e in all {
            let m = e.to_message();
            let mut buf = bytes::BytesMut::new();
            crate::encode(&crate::Message::Experimenter(m.clone()), 7, &mut buf).unwrap();
            let (frame, _) = crate::decode(&buf).unwrap().unwrap();
            let crate::Message::Experimenter(back) = frame.message else {
                panic!("not an experimenter message");
            };
            assert_eq!(Ext::from_message(&back).unwrap(), e);
        }
    }

    #[test]
    fn foreign_unknown_and_malformed_messages_are_refused() {
        let msg = |experimenter, exp_type, data: &[u8]| ExperimenterMsg {
            experimenter,
            exp_type,
            data: data.to_vec(),
        };
        assert_eq!(
            Ext::from_message(&msg(0x2320, 1, &[])),
            Err(ExtError::Foreign(0x2320))
        );
        assert_eq!(
            Ext::from_message(&msg(EXPERIMENTER_ID, 99, &[])),
            Err(ExtError::UnknownType(99))
        );
        // Count says 2, one entry follows.
        let mut d = 2u32.to_be_bytes().to_vec();
        d.extend_from_slice(&[0; 16]);
        assert!(matches!(
            Ext::from_message(&msg(EXPERIMENTER_ID, T_PORT_SOURCES, &d)),
            Err(ExtError::Malformed(_))
        ));
        assert!(matches!(
            Ext::from_message(&msg(EXPERIMENTER_ID, T_PORT_SOURCES, &[0, 0])),
            Err(ExtError::Malformed(_))
        ));
        // A reason longer than the body, a body shorter than the header.
        assert!(matches!(
            Ext::from_message(&msg(
                EXPERIMENTER_ID,
                T_DROP_SAMPLE,
                &[0, 0, 0, 1, 0, 0, 0, 9, 40, b'x']
            )),
            Err(ExtError::Malformed(_))
        ));
        assert!(matches!(
            Ext::from_message(&msg(EXPERIMENTER_ID, T_DROP_SAMPLE, &[0; 8])),
            Err(ExtError::Malformed(_))
        ));
        assert!(matches!(
            Ext::from_message(&msg(
                EXPERIMENTER_ID,
                T_DROP_SAMPLE,
                &[0, 0, 0, 1, 0, 0, 0, 9, 1, 0xff]
            )),
            Err(ExtError::Malformed(_))
        ));
    }
}
