//! Names of what an attachment creates: the controller's container id and
//! the host end of the veth. They are derived from what the runtime gives
//! (CNI: container id and interface name), so that a DEL, CHECK or GC finds
//! them again without any state kept between invocations.

/// The lowest OpenFlow port number given to runtime-attached containers:
/// ports an operator numbers by hand (`--port veth1=1`) stay below it.
pub const FIRST_PORT: u32 = 1000;

/// The highest: below the agent's default uplink port (65000) and inside
/// the datapath's direct port index (65536 slots).
pub const LAST_PORT: u32 = 64999;

/// Prefix of controller container ids made by the CNI plugin.
pub const CNI_ID_PREFIX: &str = "cni-";

/// Prefix of host-side veth names made by the CNI plugin.
pub const CNI_VETH_PREFIX: &str = "dlc";

/// Prefix of controller container ids made by the Docker driver.
pub const DOCKER_ID_PREFIX: &str = "dk-";

/// Prefix of host-side veth names made by the Docker driver.
pub const DOCKER_VETH_PREFIX: &str = "dld";

/// Prefix of the container-side veth names the Docker driver hands to
/// Docker (which moves and renames them into the container).
pub const DOCKER_PEER_PREFIX: &str = "dlp";

/// 64-bit FNV-1a over the parts, each followed by a 0 byte (so that
/// `("ab", "c")` and `("a", "bc")` differ).
pub fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The controller container id of the CNI attachment (container id,
/// interface name): `cni-` and 16 hex digits.
pub fn cni_id(container_id: &str, ifname: &str) -> String {
    format!(
        "{CNI_ID_PREFIX}{:016x}",
        fnv64(&["cni", container_id, ifname])
    )
}

/// The host end of the veth of CNI attachment `id` (from [`cni_id`]):
/// `dlc` and the id's first 12 hex digits (15 characters, the kernel's
/// limit). `None` for an id the plugin did not make.
pub fn cni_host_veth(id: &str) -> Option<String> {
    let hex = id.strip_prefix(CNI_ID_PREFIX)?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{CNI_VETH_PREFIX}{}", &hex[..12]))
}

/// The first 12 characters of a Docker id, kept to hex digits.
fn short_docker_id(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    if hex.len() == 12 {
        hex
    } else {
        // Not a Docker id: hash it instead.
        format!("{:012x}", fnv64(&[id]) & 0xffff_ffff_ffff)
    }
}

/// The host end of Docker endpoint `endpoint_id`'s veth.
pub fn docker_host_veth(endpoint_id: &str) -> String {
    format!("{DOCKER_VETH_PREFIX}{}", short_docker_id(endpoint_id))
}

/// The container end of Docker endpoint `endpoint_id`'s veth, as created
/// (Docker renames it when it moves it into the container).
pub fn docker_peer_veth(endpoint_id: &str) -> String {
    format!("{DOCKER_PEER_PREFIX}{}", short_docker_id(endpoint_id))
}

/// A fresh controller container id for a Docker endpoint whose id Docker
/// has not given yet (its address is requested first): `dk-` and 16 random
/// hex digits.
pub fn docker_record_id() -> String {
    format!("{DOCKER_ID_PREFIX}{:016x}", random_u64())
}

/// 64 random bits from the kernel (`getrandom(2)`), or, should that fail,
/// a hash of the time, the pid and a counter.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    fnv64(&[
        &t.to_string(),
        &std::process::id().to_string(),
        &COUNTER.fetch_add(1, Ordering::Relaxed).to_string(),
    ])
}

/// Whether `name` is a usable Linux interface name (1 to 15 bytes, no
/// `/`, whitespace, `:` or NUL; not `.` or `..`).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_names_are_stable_and_fit() {
        let id = cni_id("3f2a9b1c0d4e", "eth0");
        assert_eq!(id, cni_id("3f2a9b1c0d4e", "eth0"));
        assert_ne!(id, cni_id("3f2a9b1c0d4e", "eth1"));
        assert_ne!(id, cni_id("3f2a9b1c0d4", "eeth0"));
        assert!(id.starts_with("cni-") && id.len() == 20, "{id}");
        let veth = cni_host_veth(&id).unwrap();
        assert!(veth.starts_with("dlc") && veth.len() == 15, "{veth}");
        assert!(valid_ifname(&veth));
        assert_eq!(cni_host_veth("dk-0123456789abcdef"), None);
        assert_eq!(cni_host_veth("cni-xyz"), None);
    }

    #[test]
    fn docker_names_fit_and_differ() {
        let ep = "8c2f5d0c7b8e4e1b9a0f0e6c1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b";
        assert_eq!(docker_host_veth(ep), "dld8c2f5d0c7b8e");
        assert_eq!(docker_peer_veth(ep), "dlp8c2f5d0c7b8e");
        assert!(valid_ifname(&docker_host_veth("not hex at all")));
        let a = docker_record_id();
        let b = docker_record_id();
        assert_ne!(a, b);
        assert!(a.starts_with("dk-") && a.len() == 19, "{a}");
    }

    #[test]
    fn interface_names() {
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("sixteen-chars-xx"));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a b"));
    }
}
