//! IP address management, as pure functions.
//!
//! Two address spaces are managed:
//! - *logical* IPs, per network, chosen by the tenant or allocated from the
//!   network's subnet (never the network, broadcast or gateway address);
//! - *physical* IPs, from one global pool given to the controller at startup,
//!   unique across the whole cluster.
//!
//! The set of addresses in use is derived from the persisted containers, and
//! a persisted cursor makes allocation round-robin: a released address is
//! handed out again only after the rest of the range has been used, so a
//! stale ARP entry or flow elsewhere rarely meets a new owner. Both survive a
//! restart because they live in the model that the store persists.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::addr::Ipv4Net;

/// Why an address could not be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the range is taken.
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    /// The requested address is outside the range.
    #[error("{ip} is outside {range}")]
    OutsideRange {
        /// The requested address.
        ip: Ipv4Addr,
        /// The range it had to be in.
        range: Ipv4Net,
    },
    /// The requested address is the network or broadcast address, or reserved.
    #[error("{ip} is reserved in {range} (network, broadcast or gateway address)")]
    Reserved {
        /// The requested address.
        ip: Ipv4Addr,
        /// The range.
        range: Ipv4Net,
    },
    /// The requested address is already in use.
    #[error("{0} is already in use")]
    InUse(Ipv4Addr),
}

/// Checks that `ip` may be handed out in `range`, given the addresses in use
/// and the reserved ones (e.g. the gateway).
pub fn check(
    range: Ipv4Net,
    ip: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
    reserved: &[Ipv4Addr],
) -> Result<(), IpamError> {
    if !range.contains(ip) {
        return Err(IpamError::OutsideRange { ip, range });
    }
    let (lo, hi) = range.host_range();
    let n = u32::from(ip);
    if n < lo || n > hi || reserved.contains(&ip) {
        return Err(IpamError::Reserved { ip, range });
    }
    if used.contains(&ip) {
        return Err(IpamError::InUse(ip));
    }
    Ok(())
}

/// Allocates the first free address of `range` strictly after `cursor`
/// (wrapping around), skipping `used` and `reserved`. Returns the address,
/// which is also the next cursor.
pub fn allocate(
    range: Ipv4Net,
    cursor: Option<Ipv4Addr>,
    used: &BTreeSet<Ipv4Addr>,
    reserved: &[Ipv4Addr],
) -> Result<Ipv4Addr, IpamError> {
    let (lo, hi) = range.host_range();
    if lo > hi {
        return Err(IpamError::Exhausted(range));
    }
    let size = u64::from(hi - lo) + 1;
    let start = match cursor.map(u32::from) {
        Some(c) if c >= lo && c < hi => c + 1,
        _ => lo,
    };
    // Walk at most `size` candidates, but never more than the number of
    // taken addresses + 1 beyond a free one: the loop ends at the first free.
    let mut n = start;
    for _ in 0..size {
        let ip = Ipv4Addr::from(n);
        if !used.contains(&ip) && !reserved.contains(&ip) {
            return Ok(ip);
        }
        n = if n >= hi { lo } else { n + 1 };
    }
    Err(IpamError::Exhausted(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_round_robin_and_skips_reserved() {
        let r = net("10.0.0.0/29"); // hosts .1 ..= .6
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let mut used = BTreeSet::new();
        let mut cursor = None;
        let mut got = Vec::new();
        for _ in 0..5 {
            let ip = allocate(r, cursor, &used, &[gw]).unwrap();
            used.insert(ip);
            cursor = Some(ip);
            got.push(ip.octets()[3]);
        }
        assert_eq!(got, vec![2, 3, 4, 5, 6]);
        assert_eq!(
            allocate(r, cursor, &used, &[gw]),
            Err(IpamError::Exhausted(r))
        );
        // Release .3: it comes back only after wrapping.
        used.remove(&Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(
            allocate(r, cursor, &used, &[gw]).unwrap(),
            Ipv4Addr::new(10, 0, 0, 3)
        );
    }

    #[test]
    fn check_rejects_bad_requests() {
        let r = net("10.0.0.0/24");
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        let used: BTreeSet<_> = [Ipv4Addr::new(10, 0, 0, 9)].into();
        assert!(matches!(
            check(r, Ipv4Addr::new(10, 0, 1, 1), &used, &[gw]),
            Err(IpamError::OutsideRange { .. })
        ));
        assert!(matches!(
            check(r, Ipv4Addr::new(10, 0, 0, 0), &used, &[gw]),
            Err(IpamError::Reserved { .. })
        ));
        assert!(matches!(
            check(r, Ipv4Addr::new(10, 0, 0, 255), &used, &[gw]),
            Err(IpamError::Reserved { .. })
        ));
        assert!(matches!(
            check(r, gw, &used, &[gw]),
            Err(IpamError::Reserved { .. })
        ));
        assert_eq!(
            check(r, Ipv4Addr::new(10, 0, 0, 9), &used, &[gw]),
            Err(IpamError::InUse(Ipv4Addr::new(10, 0, 0, 9)))
        );
        assert!(check(r, Ipv4Addr::new(10, 0, 0, 10), &used, &[gw]).is_ok());
    }

    #[test]
    fn tiny_ranges() {
        let r = net("10.0.0.4/32");
        assert_eq!(
            allocate(r, None, &BTreeSet::new(), &[]).unwrap(),
            Ipv4Addr::new(10, 0, 0, 4)
        );
        let r = net("10.0.0.4/30");
        let used: BTreeSet<_> = [Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 6)].into();
        assert!(allocate(r, None, &used, &[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_hands_out_a_duplicate(ops in proptest::collection::vec((proptest::bool::ANY, 0usize..64), 1..200)) {
            let r = net("10.9.0.0/26");
            let gw = Ipv4Addr::new(10, 9, 0, 1);
            let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
            let mut cursor = None;
            for (alloc, k) in ops {
                if alloc {
                    match allocate(r, cursor, &used, &[gw]) {
                        Ok(ip) => {
                            proptest::prop_assert!(check(r, ip, &used, &[gw]).is_ok());
                            proptest::prop_assert!(used.insert(ip));
                            cursor = Some(ip);
                        }
                        Err(IpamError::Exhausted(_)) => proptest::prop_assert_eq!(used.len(), 61),
                        Err(e) => proptest::prop_assert!(false, "{e}"),
                    }
                } else if !used.is_empty() {
                    let ip = *used.iter().nth(k % used.len()).unwrap();
                    used.remove(&ip);
                }
            }
        }
    }
}
