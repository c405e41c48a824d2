//! The cookie scheme: every flow the policy installs carries a cookie that
//! names what it belongs to, so that a change can delete exactly the
//! affected flows with OpenFlow's cookie/mask deletion.
//!
//! ```text
//!  63      56 55                      28 27                       0
//! +----------+--------------------------+--------------------------+
//! |   kind   |        lo (28 bits)      |        hi (28 bits)      |
//! +----------+--------------------------+--------------------------+
//! ```
//!
//! `lo`/`hi` are container cookie ids (see [`crate::model::Container::cookie_id`],
//! 1..2^28, never reused). A flow of a pair of containers has `lo < hi`; a
//! flow of one container has `lo` = its id and `hi` = 0; base flows have 0, 0.
//! The one exception, [`Kind::PortDeny`], names no container: `lo` = 0 and
//! `hi` = the port (see [`port_deny`]).
//!
//! Deletions:
//! - one pair, every kind (allow and short-lived drop): cookie
//!   `pair(_, x, y)` with mask [`PAIR_MASK`];
//! - everything of container `x`: two deletes, `lo = x` with [`LO_MASK`] and
//!   `hi = x` with [`HI_MASK`];
//! - one kind of one container (e.g. its firewall flows): mask `u64::MAX`;
//! - one kind everywhere: mask [`KIND_MASK`].

/// What a flow is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Base flows installed when a switch connects.
    Base = 1,
    /// Forwarding between two containers.
    Pair = 2,
    /// Short-lived drop after a denial.
    Deny = 3,
    /// NAT-out of one container.
    NatOut = 4,
    /// Firewall (ingress DNAT) of one container.
    Firewall = 5,
    /// Short-lived drop of everything from a port no container is
    /// registered on (`hi` is the port, see [`port_deny`]).
    PortDeny = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Base,
            2 => Kind::Pair,
            3 => Kind::Deny,
            4 => Kind::NatOut,
            5 => Kind::Firewall,
            6 => Kind::PortDeny,
            _ => return None,
        })
    }
}

const ID_BITS: u32 = 28;
const ID_MAX: u64 = (1 << ID_BITS) - 1;

/// Mask of the kind bits.
pub const KIND_MASK: u64 = 0xff << 56;
/// Mask of the `lo` id.
pub const LO_MASK: u64 = ID_MAX << ID_BITS;
/// Mask of the `hi` id.
pub const HI_MASK: u64 = ID_MAX;
/// Mask of both ids.
pub const PAIR_MASK: u64 = LO_MASK | HI_MASK;

/// Builds a cookie from its parts (ids are truncated to 28 bits).
pub fn make(kind: Kind, lo: u32, hi: u32) -> u64 {
    (u64::from(kind as u8) << 56) | ((u64::from(lo) & ID_MAX) << ID_BITS) | (u64::from(hi) & ID_MAX)
}

/// The cookie of a flow of the (unordered) pair `x`, `y`.
pub fn pair(kind: Kind, x: u32, y: u32) -> u64 {
    make(kind, x.min(y), x.max(y))
}

/// The cookie of a flow of one container.
pub fn single(kind: Kind, x: u32) -> u64 {
    make(kind, x, 0)
}

/// The cookie of the drop for port `port`, on which no container is
/// registered: a registration on that port deletes it by this cookie (mask
/// `u64::MAX`), so that the container's first packets are not dropped.
/// Ports beyond 28 bits are truncated (two ports may then share the
/// cookie: a registration on one then also deletes the other's drop, which
/// only limits punts and is made again by the next packet).
pub fn port_deny(port: u32) -> u64 {
    make(Kind::PortDeny, 0, port)
}

/// Splits a cookie into (kind, lo, hi); `None` for cookies not made here.
pub fn decode(cookie: u64) -> Option<(Kind, u32, u32)> {
    let kind = Kind::from_u8((cookie >> 56) as u8)?;
    // Both ids fit 28 bits by construction of the masks.
    let lo = ((cookie & LO_MASK) >> ID_BITS) as u32;
    let hi = (cookie & HI_MASK) as u32;
    Some((kind, lo, hi))
}

/// True if a flow with `flow_cookie` is removed by a delete with `cookie`/`mask`.
pub fn matches(flow_cookie: u64, cookie: u64, mask: u64) -> bool {
    flow_cookie & mask == cookie & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_select_what_they_say() {
        let p = pair(Kind::Pair, 7, 3);
        let d = pair(Kind::Deny, 3, 7);
        let n = single(Kind::NatOut, 3);
        let other = pair(Kind::Pair, 3, 8);
        assert_eq!(decode(p), Some((Kind::Pair, 3, 7)));
        // The pair, any kind.
        assert!(matches(p, p, PAIR_MASK) && matches(d, p, PAIR_MASK));
        assert!(!matches(n, p, PAIR_MASK) && !matches(other, p, PAIR_MASK));
        // Everything of container 3 (it is `lo` in all of these).
        let lo3 = make(Kind::Base, 3, 0);
        assert!([p, d, n, other].iter().all(|c| matches(*c, lo3, LO_MASK)));
        // Everything of container 7: it is `hi` in the pair.
        let hi7 = make(Kind::Base, 0, 7);
        assert!(matches(p, hi7, HI_MASK) && !matches(n, hi7, HI_MASK));
        assert!(!matches(other, hi7, HI_MASK));
        // Base flows are never hit by container deletes.
        let base = make(Kind::Base, 0, 0);
        assert!(!matches(base, lo3, LO_MASK) && !matches(base, hi7, HI_MASK));
    }
}
