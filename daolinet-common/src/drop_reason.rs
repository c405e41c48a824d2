//! Why the datapath dropped a packet; counted per reason in [`crate::maps::DROPS`].

/// A drop reason. The discriminant is the index in the drop counter map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Headers truncated or inconsistent.
    Malformed = 0,
    /// A rule said drop (explicit drop action or an empty action list).
    PolicyDrop = 1,
    /// Source MAC/IP differs from the one registered for the container port.
    Spoofed = 2,
    /// Output to a port the datapath does not know.
    NoSuchPort = 3,
    /// The punt ring buffer was full.
    PuntRingFull = 4,
    /// The kernel refused the redirect.
    RedirectFailed = 5,
    /// TTL expired and the packet could not be punted.
    TtlExceeded = 6,
    /// Rewriting the packet (store or checksum helper) failed.
    RewriteFailed = 7,
    /// Table miss on a port whose miss policy is drop.
    MissDrop = 8,
    /// Packet arrived on an interface that is not a registered port.
    UnknownIngress = 9,
    /// An action this program type cannot execute (a push or pop on the
    /// XDP uplink).
    Unsupported = 10,
    /// A meter's drop band.
    MeterDrop = 11,
    /// No rule in a table after the first (OpenFlow 1.3: drop), or a
    /// group without a live bucket.
    TableMiss = 12,
}

impl DropReason {
    /// Number of reasons (size of the drop counter map).
    pub const COUNT: u32 = 13;

    /// All reasons, in index order.
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        Self::Malformed,
        Self::PolicyDrop,
        Self::Spoofed,
        Self::NoSuchPort,
        Self::PuntRingFull,
        Self::RedirectFailed,
        Self::TtlExceeded,
        Self::RewriteFailed,
        Self::MissDrop,
        Self::UnknownIngress,
        Self::Unsupported,
        Self::MeterDrop,
        Self::TableMiss,
    ];

    /// A short, stable name (used in logs and metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::PolicyDrop => "policy_drop",
            Self::Spoofed => "spoofed_source",
            Self::NoSuchPort => "no_such_port",
            Self::PuntRingFull => "punt_ring_full",
            Self::RedirectFailed => "redirect_failed",
            Self::TtlExceeded => "ttl_exceeded",
            Self::RewriteFailed => "rewrite_failed",
            Self::MissDrop => "miss_drop",
            Self::UnknownIngress => "unknown_ingress",
            Self::Unsupported => "unsupported",
            Self::MeterDrop => "meter_drop",
            Self::TableMiss => "table_miss",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{}", r.name());
        }
    }
}
