//! OpenFlow generation ids that say which controller set issued them
//! (sans-IO: values in, decisions out).
//!
//! A switch keeps the generation id of the last master it accepted until
//! it restarts, and tells it to anyone who asks (ROLE_REQUEST NOCHANGE).
//! Controllers sharing a store elect one master; controllers on *another*
//! store (another etcd cluster, another key prefix, or a file store) elect
//! their own and must not take the switch from it. A bare etcd revision
//! cannot tell them apart: two fresh clusters count revisions alike. So an
//! elected generation id is the election key's create revision in its low
//! [`REVISION_BITS`] bits and the set's [`SetTag`] (a random number kept in
//! the store, the same for every controller of the set) in the high 24:
//! it still grows with every new leader of the set, as OpenFlow requires,
//! and [`holder`] reads from a switch's generation id whether this set,
//! another one or nobody elected its master.

use std::fmt;

/// Bits of an elected generation id that hold the election key's create
/// revision (etcd revisions up to 2^40, about 10^12 writes).
pub const REVISION_BITS: u32 = 40;

const REVISION_MASK: u64 = (1 << REVISION_BITS) - 1;

/// A controller set's tag: 24 bits, never 0 nor all ones (so a tagged
/// generation id is never a switch's "none").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetTag(u32);

impl SetTag {
    /// The largest tag.
    const MAX: u32 = 0x00ff_fffe;

    /// A tag from 24 bits; `None` for 0, all ones or more than 24 bits.
    pub fn new(v: u32) -> Option<SetTag> {
        (1..=Self::MAX).contains(&v).then_some(SetTag(v))
    }

    /// A valid tag from any random bits.
    pub fn from_random(bits: u32) -> SetTag {
        SetTag(1 + bits % Self::MAX)
    }

    /// The tag as stored (six hex digits).
    pub fn to_hex(self) -> String {
        format!("{:06x}", self.0)
    }

    /// Reads a stored tag; `None` unless six hex digits of a valid tag.
    pub fn parse(s: &str) -> Option<SetTag> {
        let s = s.trim();
        if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok().and_then(SetTag::new)
    }

    /// Its value.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for SetTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The generation id of a leader of set `tag` whose election key was
/// created at `revision` (its low [`REVISION_BITS`] bits).
pub fn generation(tag: SetTag, revision: u64) -> u64 {
    (u64::from(tag.0) << REVISION_BITS) | (revision & REVISION_MASK)
}

/// The tag of an elected generation id (`None` for the switch's "none"
/// and for ids no tagged set issued).
pub fn tag_of(generation: u64) -> Option<SetTag> {
    if is_none(generation) {
        return None;
    }
    u32::try_from(generation >> REVISION_BITS)
        .ok()
        .and_then(SetTag::new)
}

/// The election key's create revision in an elected generation id.
pub fn revision_of(generation: u64) -> u64 {
    generation & REVISION_MASK
}

/// A switch's "no generation id yet": 0 from the agent, all ones from
/// Open vSwitch.
pub fn is_none(generation: u64) -> bool {
    generation == 0 || generation == u64::MAX
}

/// Who elected the master a switch's generation id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: the switch has had no master (or does not do roles).
    Nobody,
    /// This controller's set.
    Us,
    /// A generation id without a set's tag (its high 24 bits zero): a
    /// DaoliNet controller set from before tags (the generation id was the
    /// bare revision), or another kind of controller. An elected set takes
    /// the switch, as before tags, so that a rolling upgrade keeps its
    /// switches; a controller without election leaves it alone.
    Untagged,
    /// Controllers on another store: this controller must not act on the
    /// switch.
    Elsewhere,
}

/// Whose master the switch's generation id `switch` names, for a
/// controller of set `ours` (`None`: a controller without election, which
/// issues no generation id).
pub fn holder(switch: u64, ours: Option<SetTag>) -> Holder {
    if is_none(switch) {
        Holder::Nobody
    } else if ours.is_some() && tag_of(switch) == ours {
        Holder::Us
    } else if switch >> REVISION_BITS == 0 {
        Holder::Untagged
    } else {
        Holder::Elsewhere
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(v: u32) -> SetTag {
        SetTag::new(v).unwrap()
    }

    #[test]
    fn tags_are_24_bits_never_0_nor_all_ones() {
        assert_eq!(SetTag::new(0), None);
        assert_eq!(SetTag::new(0xff_ffff), None);
        assert_eq!(SetTag::new(0x100_0000), None);
        assert_eq!(SetTag::new(0xab_cdef).map(SetTag::get), Some(0xab_cdef));
        for bits in [0, 1, 0xff_fffe, 0xff_ffff, u32::MAX, 0x1234_5678] {
            let t = SetTag::from_random(bits);
            assert_eq!(SetTag::new(t.get()), Some(t), "{bits:#x}");
        }
    }

    #[test]
    fn stored_tags_round_trip_and_garbage_is_refused() {
        let t = tag(0x0a_0b0c);
        assert_eq!(t.to_hex(), "0a0b0c");
        assert_eq!(SetTag::parse(&t.to_hex()), Some(t));
        assert_eq!(SetTag::parse(" 0a0b0c\n"), Some(t));
        for bad in [
            "", "0a0b0", "0a0b0c0", "zzzzzz", "000000", "ffffff", "+a0b0c",
        ] {
            assert_eq!(SetTag::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_sets_generations_grow_with_the_revision_and_carry_its_tag() {
        let t = tag(0x12_3456);
        let (g1, g2) = (generation(t, 7), generation(t, 8));
        assert!(g2 > g1);
        assert_eq!(revision_of(g1), 7);
        assert_eq!(tag_of(g1), Some(t));
        assert_eq!(g1, 0x1234_5600_0000_0007);
        // Never the switch's "none".
        assert!(!is_none(generation(tag(1), 0)));
        assert!(!is_none(generation(tag(0xff_fffe), REVISION_MASK)));
    }

    #[test]
    fn the_switch_names_nobody_us_or_another_set() {
        let (us, them) = (tag(0x11_1111), tag(0x22_2222));
        for none in [0, u64::MAX] {
            assert_eq!(holder(none, Some(us)), Holder::Nobody);
            assert_eq!(holder(none, None), Holder::Nobody);
        }
        assert_eq!(holder(generation(us, 5), Some(us)), Holder::Us);
        // Another set, even at the very same revision (two fresh clusters).
        assert_eq!(holder(generation(them, 5), Some(us)), Holder::Elsewhere);
        // A controller without election owns no generation id.
        assert_eq!(holder(generation(us, 5), None), Holder::Elsewhere);
        // An untagged id (a set from before tags, another implementation).
        assert_eq!(holder(5, Some(us)), Holder::Untagged);
        assert_eq!(holder(5, None), Holder::Untagged);
        assert_eq!(holder(REVISION_MASK, Some(us)), Holder::Untagged);
        // High bits that are no valid tag: not ours, not untagged.
        assert_eq!(holder(u64::MAX - 1, Some(us)), Holder::Elsewhere);
    }
}
