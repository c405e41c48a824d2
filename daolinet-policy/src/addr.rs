//! Address types shared by the model, the policy and the API: MAC addresses,
//! IPv4 prefixes and OpenFlow datapath ids, each with a strict text form.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a textual address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Not six colon-separated hex octets.
    #[error("invalid MAC address {0:?} (expected six hex octets like 02:00:00:00:00:01)")]
    Mac(String),
    /// Not `A.B.C.D/N` with N in 0..=32.
    #[error("invalid IPv4 prefix {0:?} (expected A.B.C.D/N with N between 0 and 32)")]
    Prefix(String),
    /// The address part has bits set below the prefix length.
    #[error("IPv4 prefix {given} has host bits set (did you mean {normalized}?)")]
    HostBits {
        /// What the user wrote.
        given: String,
        /// The same prefix with the host bits cleared.
        normalized: String,
    },
    /// Not a hexadecimal 64-bit datapath id.
    #[error("invalid datapath id {0:?} (expected up to 16 hex digits, optionally 0x-prefixed)")]
    Dpid(String),
    /// A gateway MAC that a container could also have, or that is not a
    /// unicast address.
    #[error("gateway MAC {mac} {why}")]
    Gateway {
        /// The MAC given.
        mac: MacAddr,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for group (multicast or broadcast) addresses.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// A locally administered unicast MAC built from a 32-bit number:
    /// `02:da:XX:XX:XX:XX`.
    pub fn local_from_u32(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0xda, b[0], b[1], b[2], b[3]])
    }

    /// The MAC given to a container with cookie id `id` (< 2^28) when none
    /// is requested: `02:da:1X:XX:XX:XX`, so it never equals the default
    /// gateway MAC `02:da:00:00:00:01` (container 1 used to get exactly
    /// that address).
    pub fn container(id: u32) -> MacAddr {
        let b = (id & 0x0fff_ffff).to_be_bytes();
        MacAddr([0x02, 0xda, 0x10 | b[0], b[1], b[2], b[3]])
    }
}

/// The first MAC [`MacAddr::container`] generates.
pub const CONTAINER_MAC_FIRST: MacAddr = MacAddr([0x02, 0xda, 0x10, 0, 0, 0]);
/// The last MAC [`MacAddr::container`] generates.
pub const CONTAINER_MAC_LAST: MacAddr = MacAddr([0x02, 0xda, 0x1f, 0xff, 0xff, 0xff]);

impl MacAddr {
    /// True inside the range [`MacAddr::container`] hands out
    /// ([`CONTAINER_MAC_FIRST`]..=[`CONTAINER_MAC_LAST`]).
    pub fn is_generated_container_mac(&self) -> bool {
        (CONTAINER_MAC_FIRST..=CONTAINER_MAC_LAST).contains(self)
    }

    /// Check a MAC for use as the gateway MAC (the address that answers
    /// every container's ARP): unicast, not zero, and outside the range of
    /// generated container MACs (a container with the same MAC would
    /// answer for the gateway).
    pub fn check_gateway(self) -> Result<MacAddr, AddrError> {
        let why = if self.0 == [0; 6] {
            "is the zero address"
        } else if self.is_multicast() {
            "is a multicast/broadcast address (the first octet's lowest bit is set)"
        } else if self.is_generated_container_mac() {
            "is in the range the controller gives containers \
             (02:da:10:00:00:00-02:da:1f:ff:ff:ff): choose another"
        } else {
            return Ok(self);
        };
        Err(AddrError::Gateway { mac: self, why })
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(|| AddrError::Mac(s.into()))?;
            if p.is_empty() || p.len() > 2 {
                return Err(AddrError::Mac(s.into()));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| AddrError::Mac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(AddrError::Mac(s.into()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An IPv4 prefix whose address has no host bits set, e.g. `10.0.0.0/24`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// Builds a prefix; fails when `len > 32` or host bits are set.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, AddrError> {
        if len > 32 {
            return Err(AddrError::Prefix(format!("{addr}/{len}")));
        }
        let net = Ipv4Net { addr, len };
        if net.network() != addr {
            return Err(AddrError::HostBits {
                given: format!("{addr}/{len}"),
                normalized: format!("{}/{len}", net.network()),
            });
        }
        Ok(net)
    }

    /// Builds a prefix, clearing any host bits; `len` is clamped to 32.
    pub fn new_truncating(addr: Ipv4Addr, len: u8) -> Self {
        let len = len.min(32);
        let n = Ipv4Net { addr, len };
        Ipv4Net {
            addr: n.network(),
            len,
        }
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The netmask as a 32-bit number.
    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// True if `ip` lies inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// True if the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The range of addresses usable by hosts: everything but the network and
    /// broadcast addresses for prefixes shorter than /31, every address for /31 and /32.
    pub fn host_range(&self) -> (u32, u32) {
        let lo = u32::from(self.network());
        let hi = u32::from(self.broadcast());
        if self.len >= 31 {
            (lo, hi)
        } else {
            (lo + 1, hi - 1)
        }
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Ipv4Net {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| AddrError::Prefix(s.into()))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| AddrError::Prefix(s.into()))?;
        let len: u8 = l.parse().map_err(|_| AddrError::Prefix(s.into()))?;
        Ipv4Net::new(addr, len)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An OpenFlow datapath id, written as 16 hex digits like Open vSwitch does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dpid(pub u64);

impl fmt::Display for Dpid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Dpid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dpid:{:016x}", self.0)
    }
}

impl FromStr for Dpid {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let h = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if h.is_empty() || h.len() > 16 {
            return Err(AddrError::Dpid(s.into()));
        }
        u64::from_str_radix(h, 16)
            .map(Dpid)
            .map_err(|_| AddrError::Dpid(s.into()))
    }
}

impl Serialize for Dpid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dpid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(u64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(n) => Ok(Dpid(n)),
            Repr::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_errors() {
        let m: MacAddr = "02:DA:00:00:00:0a".parse().unwrap();
        assert_eq!(m.to_string(), "02:da:00:00:00:0a");
        assert!("02:da:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:da:00:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:da:00:00:00:zz".parse::<MacAddr>().is_err());
        assert!("".parse::<MacAddr>().is_err());
    }

    #[test]
    fn container_macs_avoid_the_default_gateway() {
        let gw = crate::Config::default().gateway_mac;
        assert_eq!(MacAddr::container(1).to_string(), "02:da:10:00:00:01");
        assert_eq!(
            MacAddr::container(0x0fff_ffff).to_string(),
            "02:da:1f:ff:ff:ff"
        );
        for id in [0, 1, 2, 255, 0x0fff_ffff] {
            let m = MacAddr::container(id);
            assert!(m != gw && !m.is_multicast());
        }
    }

    #[test]
    fn gateway_macs_outside_the_container_range_only() {
        let ok = |s: &str| s.parse::<MacAddr>().unwrap().check_gateway();
        assert!(ok("02:da:00:00:00:01").is_ok());
        assert!(ok("02:da:0f:ff:ff:ff").is_ok());
        assert!(ok("02:da:20:00:00:00").is_ok());
        assert!(ok("00:00:00:00:00:01").is_ok());
        for bad in [
            "02:da:10:00:00:00",
            "02:da:10:00:00:01",
            "02:da:1f:ff:ff:ff",
            "02:da:17:12:34:56",
        ] {
            let e = ok(bad).unwrap_err().to_string();
            assert!(e.contains("range the controller gives containers"), "{e}");
        }
        for id in [0, 1, 0x0fff_ffff, u32::MAX] {
            assert!(MacAddr::container(id).check_gateway().is_err());
        }
        assert!(ok("00:00:00:00:00:00")
            .unwrap_err()
            .to_string()
            .contains("zero"));
        assert!(ok("ff:ff:ff:ff:ff:ff")
            .unwrap_err()
            .to_string()
            .contains("multicast"));
        assert!(ok("01:00:5e:00:00:01")
            .unwrap_err()
            .to_string()
            .contains("multicast"));
        assert_eq!(
            ok("02:da:10:00:00:05").unwrap_err().to_string(),
            "gateway MAC 02:da:10:00:00:05 is in the range the controller gives containers \
             (02:da:10:00:00:00-02:da:1f:ff:ff:ff): choose another"
        );
    }

    #[test]
    fn prefix_rules() {
        let n: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert!(n.contains(Ipv4Addr::new(10, 0, 0, 77)));
        assert!(!n.contains(Ipv4Addr::new(10, 0, 1, 1)));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 0, 0, 255));
        assert!(matches!(
            "10.0.0.1/24".parse::<Ipv4Net>(),
            Err(AddrError::HostBits { .. })
        ));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Net>().is_err());
        let z: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(z.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(n.overlaps(&"10.0.0.128/25".parse().unwrap()));
        assert!(!n.overlaps(&"10.0.1.0/24".parse().unwrap()));
    }

    #[test]
    fn dpid_forms() {
        assert_eq!("0x1".parse::<Dpid>().unwrap(), Dpid(1));
        assert_eq!(Dpid(0xab).to_string(), "00000000000000ab");
        let d: Dpid = serde_json::from_str("\"00000000000000ab\"").unwrap();
        assert_eq!(d, Dpid(0xab));
        let d: Dpid = serde_json::from_str("171").unwrap();
        assert_eq!(d, Dpid(171));
        assert!("12345678901234567".parse::<Dpid>().is_err());
    }
}
