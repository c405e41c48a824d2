//! Unique names: every namespace, root-namespace interface, bpffs mount
//! and directory a test creates carries a tag made of a two-letter prefix,
//! the test process's pid and a per-process counter, so two test binaries
//! (or two people) running at the same time never collide, and no test
//! ever has to delete something it did not create.

use std::sync::atomic::{AtomicU32, Ordering};

/// Longest network interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Environment variable overriding the two-letter prefix of every name
/// (default `dl`), e.g. to tell apart whose test left something behind.
pub const PREFIX_ENV: &str = "DAOLINET_TEST_PREFIX";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `n` in base 36, left-padded with zeros to `width` digits (only the low
/// `width` digits are kept).
fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The two-letter prefix: `$DAOLINET_TEST_PREFIX` when it is two ASCII
/// lowercase letters or digits, else `dl`.
pub fn prefix() -> String {
    std::env::var(PREFIX_ENV)
        .ok()
        .filter(|p| {
            p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .unwrap_or_else(|| "dl".to_string())
}

/// A fresh tag: prefix, pid (5 base-36 digits) and a per-process counter
/// (2 digits), 9 characters; fixed widths keep tags of different processes
/// distinct. A name is the tag plus a suffix of at most 6 characters.
pub fn fresh_tag() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}{}{}",
        prefix(),
        base36(u64::from(std::process::id()), 5),
        base36(u64::from(n), 2)
    )
}

/// `tag` + `suffix`, checked against the interface name limit.
#[track_caller]
pub fn join(tag: &str, suffix: &str) -> String {
    let name = format!("{tag}{suffix}");
    assert!(
        name.len() <= IFNAME_MAX,
        "name {name:?} is longer than {IFNAME_MAX} characters: use a shorter suffix than {suffix:?}"
    );
    assert!(
        suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "suffix {suffix:?}: use letters, digits, - or _"
    );
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_fixed_width_and_distinct() {
        let (a, b) = (fresh_tag(), fresh_tag());
        assert_ne!(a, b);
        assert_eq!(a.len(), 9);
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(36 * 36 + 1, 2), "01");
        assert_eq!(join(&a, "br0").len(), 12);
    }

    #[test]
    #[should_panic(expected = "longer than 15")]
    fn too_long_names_are_refused() {
        join(&fresh_tag(), "toolong");
    }
}
