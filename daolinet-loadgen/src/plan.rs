//! The benchmark topology, as pure values: fake hosts (one per switch), the
//! containers on their ports, the flows the switches punt, and the frames
//! and PACKET_INs that carry them.
//!
//! Layout (deterministic, so the registration, the generator and the os-ken
//! app agree without talking to each other):
//! - switch `s` (0-based) is host `lg-h{s}`, datapath id `0xda1c_0000_0000 + s + 1`,
//!   underlay IP `192.168.(200 + s / 250).(1 + s % 250)`, uplink port 1;
//! - its container `j` (0-based) is `lg-s{s}-c{j}` in network `lg-net`
//!   (`10.200.0.0/16`, gateway `10.200.0.1`) with IP `10.200.s.(10 + j)`,
//!   MAC `02:1c:00:00:{s}:{j}` and OpenFlow port `10 + j`;
//! - the flows of a switch are its same-host pairs `(a, b)` with `a < b`,
//!   cycled in order. Only `a < b` is sent so that the reverse flow a
//!   controller installs for a pair (`b -> a`) can never be mistaken for the
//!   answer to another outstanding PACKET_IN.

use std::net::Ipv4Addr;

use bytes::BytesMut;
use daolinet_openflow::{encode, Message, PacketIn, OFPR_NO_MATCH};
use daolinet_policy::addr::{Dpid, Ipv4Net, MacAddr};
use daolinet_policy::model::{ContainerSpec, Host, NetworkSpec};

/// Largest number of switches (the third octet of the container IPs).
pub const MAX_SWITCHES: usize = 250;
/// Largest number of containers per switch (the fourth octet, from 10).
pub const MAX_CONTAINERS: usize = 240;
/// The uplink port of every fake host.
pub const UPLINK_PORT: u32 = 1;
/// The network every container joins.
pub const NETWORK: &str = "lg-net";
/// Its gateway.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// Datapath id of switch 0 minus one.
pub const DPID_BASE: u64 = 0xda1c_0000_0000;
/// The controller's default gateway MAC, the Ethernet destination of every
/// frame a container sends off its own IP (after the ARP proxy answered).
pub const DEFAULT_GATEWAY_MAC: [u8; 6] = [0x02, 0xda, 0x00, 0x00, 0x00, 0x01];
/// UDP destination port of the generated frames.
pub const UDP_DPORT: u16 = 5001;

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Switch count out of range.
    Switches(usize),
    /// Container count out of range.
    Containers(usize),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Switches(n) => {
                write!(f, "--switches must be 1..={MAX_SWITCHES}, got {n}")
            }
            PlanError::Containers(n) => write!(
                f,
                "--containers must be 2..={MAX_CONTAINERS} (a pair needs two), got {n}"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// One fake container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Container {
    /// Logical IP.
    pub ip: Ipv4Addr,
    /// MAC.
    pub mac: [u8; 6],
    /// OpenFlow port on its switch.
    pub port: u32,
}

/// The whole topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Number of switches (fake hosts).
    pub switches: usize,
    /// Containers per switch.
    pub containers: usize,
    /// Ethernet destination of the generated frames.
    pub gateway_mac: [u8; 6],
}

impl Plan {
    /// A plan with `switches` hosts of `containers` containers each.
    pub fn new(switches: usize, containers: usize) -> Result<Plan, PlanError> {
        if switches == 0 || switches > MAX_SWITCHES {
            return Err(PlanError::Switches(switches));
        }
        if !(2..=MAX_CONTAINERS).contains(&containers) {
            return Err(PlanError::Containers(containers));
        }
        Ok(Plan {
            switches,
            containers,
            gateway_mac: DEFAULT_GATEWAY_MAC,
        })
    }

    /// Datapath id of switch `s`.
    pub fn dpid(&self, s: usize) -> u64 {
        DPID_BASE + s as u64 + 1
    }

    /// Host name of switch `s`.
    pub fn host_name(&self, s: usize) -> String {
        format!("lg-h{s}")
    }

    /// Underlay MAC of switch `s`.
    pub fn host_mac(&self, s: usize) -> [u8; 6] {
        [0x02, 0x1d, 0, 0, (s >> 8) as u8, s as u8]
    }

    /// The registration of switch `s` as a DaoliNet host (the host record
    /// is also the body of `POST /api/hosts`).
    pub fn host(&self, s: usize) -> Host {
        Host {
            name: self.host_name(s),
            dpid: Dpid(self.dpid(s)),
            ip: Ipv4Addr::new(192, 168, 200 + (s / 250) as u8, 1 + (s % 250) as u8),
            mac: MacAddr(self.host_mac(s)),
            uplink_port: UPLINK_PORT,
            local_mac: None,
        }
    }

    /// The network every container joins.
    pub fn network(&self) -> NetworkSpec {
        NetworkSpec {
            name: NETWORK.into(),
            subnet: Ipv4Net::new_truncating(Ipv4Addr::new(10, 200, 0, 0), 16),
            gateway: Some(GATEWAY_IP),
            tenant: Some("loadgen".into()),
            nat_out: Some(false),
        }
    }

    /// Container `j` of switch `s`.
    pub fn container(&self, s: usize, j: usize) -> Container {
        Container {
            ip: Ipv4Addr::new(10, 200, s as u8, 10 + j as u8),
            mac: [0x02, 0x1c, 0, 0, s as u8, j as u8],
            port: 10 + j as u32,
        }
    }

    /// The registration of container `j` of switch `s`.
    pub fn container_spec(&self, s: usize, j: usize) -> ContainerSpec {
        let c = self.container(s, j);
        ContainerSpec {
            id: format!("lg-s{s}-c{j}"),
            name: None,
            network: NETWORK.into(),
            ip: Some(c.ip),
            mac: Some(MacAddr(c.mac)),
            host: self.host_name(s),
            port: c.port,
        }
    }

    /// Number of distinct flows (pairs `a < b`) per switch.
    pub fn pairs_per_switch(&self) -> usize {
        self.containers * (self.containers - 1) / 2
    }

    /// The pairs of a switch, in sending order.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let n = self.containers;
        let mut v = Vec::with_capacity(self.pairs_per_switch());
        // By distance first, so consecutive PACKET_INs come from different ports.
        for d in 1..n {
            for a in 0..n - d {
                v.push((a, a + d));
            }
        }
        v
    }

    /// The JSON table the os-ken app reads: every container with its switch.
    pub fn to_json(&self) -> serde_json::Value {
        let mut cs = Vec::new();
        for s in 0..self.switches {
            for j in 0..self.containers {
                let c = self.container(s, j);
                cs.push(serde_json::json!({
                    "dpid": self.dpid(s),
                    "ip": c.ip.to_string(),
                    "mac": MacAddr(c.mac).to_string(),
                    "port": c.port,
                }));
            }
        }
        serde_json::json!({
            "gateway_mac": MacAddr(self.gateway_mac).to_string(),
            "idle_timeout": 10,
            "containers": cs,
        })
    }
}

fn checksum(words: &[u8]) -> u16 {
    let mut sum = 0u32;
    for ch in words.chunks(2) {
        let hi = u32::from(ch[0]) << 8;
        let lo = ch.get(1).copied().map(u32::from).unwrap_or(0);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A minimum-size (60 bytes, 64 with the FCS) Ethernet/IPv4/UDP frame from `src` to `dst` (through the gateway
/// MAC), with a valid IP header checksum (UDP checksum 0 = none).
pub fn frame(gateway_mac: [u8; 6], src: &Container, dst: &Container, sport: u16) -> Vec<u8> {
    const PAYLOAD: usize = 18;
    let udp_len = 8 + PAYLOAD;
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&gateway_mac);
    f.extend_from_slice(&src.mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // ttl
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.ip.octets());
    ip[16..20].copy_from_slice(&dst.ip.octets());
    let ck = checksum(&ip);
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&UDP_DPORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x5a; PAYLOAD]);
    f
}

/// The key identifying a flow's answer: `(in_port, ipv4_src, ipv4_dst)`
/// packed in a `u64`'s worth of bits plus the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Ingress port of the punted packet.
    pub in_port: u32,
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
}

/// One flow of a switch, ready to send.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The key its FLOW_MOD answer matches on.
    pub key: FlowKey,
    /// The encoded PACKET_IN message.
    pub packet_in: Vec<u8>,
}

/// The PACKET_INs switch `s` sends, one per pair, encoded once. The xid is
/// the pair's index plus one.
pub fn flows(plan: &Plan, s: usize) -> anyhow::Result<Vec<Flow>> {
    let mut out = Vec::with_capacity(plan.pairs_per_switch());
    for (i, (a, b)) in plan.pairs().into_iter().enumerate() {
        let (ca, cb) = (plan.container(s, a), plan.container(s, b));
        let data = frame(plan.gateway_mac, &ca, &cb, 10000 + (i % 50000) as u16);
        let pi = PacketIn::new(ca.port, OFPR_NO_MATCH, data);
        let mut buf = BytesMut::with_capacity(128);
        encode(&Message::PacketIn(pi), i as u32 + 1, &mut buf)?;
        out.push(Flow {
            key: FlowKey {
                in_port: ca.port,
                src: ca.ip,
                dst: cb.ip,
            },
            packet_in: buf.to_vec(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use daolinet_policy::model::Model;
    use daolinet_policy::{handle_packet_in, Config, Decision, Snapshot, Verdict};
    use std::collections::HashSet;

    fn model(plan: &Plan) -> Model {
        let mut m = Model::default();
        for s in 0..plan.switches {
            m.add_host(plan.host(s)).unwrap();
        }
        m.add_network(plan.network()).unwrap();
        for s in 0..plan.switches {
            for j in 0..plan.containers {
                m.add_container(plan.container_spec(s, j), Config::default().physical_pool)
                    .unwrap();
            }
        }
        m
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(Plan::new(0, 4), Err(PlanError::Switches(0)));
        assert_eq!(Plan::new(251, 4), Err(PlanError::Switches(251)));
        assert_eq!(Plan::new(1, 1), Err(PlanError::Containers(1)));
        assert_eq!(Plan::new(1, 241), Err(PlanError::Containers(241)));
        assert!(Plan::new(250, 240).is_ok());
    }

    #[test]
    fn addresses_are_unique_and_pairs_ordered() {
        let p = Plan::new(250, 240).unwrap();
        let mut ips = HashSet::new();
        let mut macs = HashSet::new();
        for s in [0, 1, 249] {
            for j in 0..240 {
                let c = p.container(s, j);
                assert!(ips.insert(c.ip));
                assert!(macs.insert(c.mac));
                assert_ne!(c.port, UPLINK_PORT);
            }
        }
        let pairs = p.pairs();
        assert_eq!(pairs.len(), p.pairs_per_switch());
        assert!(pairs.iter().all(|(a, b)| a < b));
        assert_eq!(pairs.iter().collect::<HashSet<_>>().len(), pairs.len());
        let dpids: HashSet<_> = (0..250).map(|s| p.dpid(s)).collect();
        assert_eq!(dpids.len(), 250);
    }

    #[test]
    fn frame_is_valid_ipv4() {
        let p = Plan::new(2, 3).unwrap();
        let f = frame(p.gateway_mac, &p.container(1, 0), &p.container(1, 2), 7);
        assert_eq!(f.len(), 60, "a minimum-size frame (64 bytes with the FCS)");
        assert_eq!(checksum(&f[14..34]), 0, "IP header checksum verifies");
        let pk = daolinet_policy::Packet::parse(&f).unwrap();
        match pk.l3 {
            daolinet_policy::L3::Ipv4(ip) => {
                assert_eq!(ip.src, Ipv4Addr::new(10, 200, 1, 10));
                assert_eq!(ip.dst, Ipv4Addr::new(10, 200, 1, 12));
                assert_eq!(ip.ports, Some((7, UDP_DPORT)));
            }
            other => panic!("not IPv4: {other:?}"),
        }
    }

    /// Every PACKET_IN of the plan is one the DaoliNet policy answers with a
    /// same-host pair whose first local flow matches the flow's key.
    #[test]
    fn the_policy_answers_every_flow_with_its_key() {
        let p = Plan::new(3, 5).unwrap();
        let snap = Snapshot::new(model(&p));
        let cfg = Config::default();
        for s in 0..p.switches {
            for f in flows(&p, s).unwrap() {
                let (frame, _) = daolinet_openflow::decode(&f.packet_in).unwrap().unwrap();
                let Message::PacketIn(pi) = frame.message else {
                    panic!("not a PACKET_IN")
                };
                assert_eq!(pi.in_port(), Some(f.key.in_port));
                let out = handle_packet_in(&snap, &cfg, Dpid(p.dpid(s)), f.key.in_port, &pi.data);
                assert_eq!(out.verdict, Verdict::SameHost);
                let keys: Vec<FlowKey> = out
                    .decisions
                    .iter()
                    .filter_map(|d| match d {
                        Decision::AddFlow(fs) => Some(FlowKey {
                            in_port: fs.match_.in_port.unwrap(),
                            src: fs.match_.ipv4_src.unwrap().addr,
                            dst: fs.match_.ipv4_dst.unwrap().addr,
                        }),
                        _ => None,
                    })
                    .collect();
                assert_eq!(keys.len(), 2, "forward and reverse flow");
                assert!(keys.contains(&f.key));
            }
        }
    }

    #[test]
    fn json_table_lists_every_container() {
        let p = Plan::new(2, 3).unwrap();
        let v = p.to_json();
        assert_eq!(v["containers"].as_array().unwrap().len(), 6);
        assert_eq!(v["gateway_mac"], "02:da:00:00:00:01");
    }
}
