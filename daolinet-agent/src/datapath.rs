//! The I/O edge: load the BPF object, pin its maps under bpffs, attach the
//! programs to ports, apply [`MapOp`]s and read counters and punts.

use std::collections::HashMap as StdHashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray, RingBuf};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::xdp::XdpLink;
use aya::programs::xdp::XdpMode;
use aya::programs::{SchedClassifier, TcAttachType, Xdp};
use aya::util::nr_cpus;
use aya::{Ebpf, EbpfLoader};
use daolinet_common::{
    maps as names, DatapathConfig, DropReason, FlowEntry, FlowKeyExt, FlowMapKey, FullKey,
    GroupEntry, GroupStats, MeterEntry, MeterStats, MissPolicy, PortInfo, PortKind, PortStats,
    PuntHeader, RuleExt, RuleStats, Subtable, TableConfig, TableStats, WideMapKey, ENTRY_PIPELINE,
    MAX_PORTS, MAX_SUBTABLES, N_TABLES, OFPORT_INDEX_SLOTS, PORT_FLAG_ANTI_SPOOF, PORT_INDEX_SLOTS,
    SUBTABLE_WIDE, TABLE_WIDE,
};

use crate::table::{EntryKey, MapOp};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Environment variable naming the BPF object to load.
pub const OBJECT_ENV: &str = "DAOLINET_BPF_OBJECT";

/// How the uplink program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UplinkMode {
    /// TC (tcx) ingress.
    Tc,
    /// XDP (native if the driver supports it, generic otherwise).
    Xdp,
}

/// The BPF object built with this agent (see `build.rs`): empty when the
/// agent was built with `DAOLINET_EMBED_BPF_OBJECT=none`.
static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/daolinet.bpf.o"));

/// The BPF object the datapath loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BpfObject {
    /// The object embedded in this binary at build time.
    Embedded,
    /// An object file (`--bpf-object`, `$DAOLINET_BPF_OBJECT`).
    File(PathBuf),
}

impl BpfObject {
    /// `explicit` (`--bpf-object`) if given, else `$DAOLINET_BPF_OBJECT`
    /// if set, else the embedded object.
    pub fn choose(explicit: Option<PathBuf>) -> Self {
        match explicit.or_else(|| std::env::var_os(OBJECT_ENV).map(PathBuf::from)) {
            Some(path) => BpfObject::File(path),
            None => BpfObject::Embedded,
        }
    }

    /// The object's bytes, or one clear error: an unreadable file, or an
    /// agent built without an embedded object.
    pub fn bytes(&self) -> Result<std::borrow::Cow<'static, [u8]>> {
        match self {
            BpfObject::Embedded if EMBEDDED_OBJECT.is_empty() => bail!(
                "this daolinet-agent was built without its BPF object \
                 (DAOLINET_EMBED_BPF_OBJECT=none): pass --bpf-object PATH or set {OBJECT_ENV} \
                 (`cargo xtask build-ebpf --release` writes target/bpf/daolinet.bpf.o)"
            ),
            BpfObject::Embedded => Ok(std::borrow::Cow::Borrowed(EMBEDDED_OBJECT)),
            BpfObject::File(path) => std::fs::read(path)
                .map(std::borrow::Cow::Owned)
                .with_context(|| {
                    format!(
                        "cannot read the BPF object {} (--bpf-object or {OBJECT_ENV}; build one \
                         with `cargo xtask build-ebpf --release`, or set neither to use the \
                         object built into this binary)",
                        path.display()
                    )
                }),
        }
    }

    /// True when this binary carries an object (it was not built with
    /// `DAOLINET_EMBED_BPF_OBJECT=none`).
    pub fn has_embedded() -> bool {
        !EMBEDDED_OBJECT.is_empty()
    }
}

impl std::fmt::Display for BpfObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BpfObject::Embedded => write!(f, "embedded ({} bytes)", EMBEDDED_OBJECT.len()),
            BpfObject::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Mount bpffs on `dir` unless it already is one.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    if is_bpffs(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let c = |s: &str| CString::new(s).map_err(|_| anyhow!("NUL in {s:?}"));
    let target = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("NUL in {}", dir.display()))?;
    let (src, fstype) = (c("bpf")?, c("bpf")?);
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 && !is_bpffs(Path::new(BPFFS)) {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs on {}", dir.display()));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(cpath) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; zeroed is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let rc = unsafe { libc::statfs(cpath.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The MAC address of `iface` (from sysfs).
fn sys_mac(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| anyhow!("{iface}: no Ethernet address in {path}"))?;
    }
    Ok(mac)
}

/// Interface index of `iface`, or a clear error.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = CString::new(iface).map_err(|_| anyhow!("bad interface name {iface:?}"))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no such interface: {iface}");
    }
    Ok(idx)
}

/// Refuse to start when another DaoliNet datapath already serves the
/// uplink `iface` (a second agent on the host, with another state dir):
/// checked before anything is changed. `pin_dir` is this agent's pin
/// directory (its own link of an earlier run is not another datapath).
/// Only the tcx ingress attachment is recognised; with
/// `--uplink-mode xdp` the XDP attach itself refuses a busy uplink.
pub fn refuse_served_uplink(iface: &str, pin_dir: &Path) -> Result<()> {
    let idx = ifindex(iface)?;
    let pin = pin_dir.join("links").join(format!("ingress-{idx}-{iface}"));
    let own = pinned_link(&pin)
        .as_ref()
        .and_then(|l| l.info().ok())
        .map(|i| i.program_id());
    refuse_busy_port(iface, own)
}

/// Refuse `iface` when another DaoliNet datapath already serves it: tcx
/// lets several programs share an interface, so a second agent (another
/// state dir, hence other maps) would silently run after the first one on
/// every packet. Programs are recognised by name ([`names::PROG_TC`]);
/// `own` is the program of this agent's own pinned link (left by its
/// previous run, about to be replaced). Other tcx programs are allowed
/// (logged): they run before ours.
fn refuse_busy_port(iface: &str, own: Option<u32>) -> Result<()> {
    let progs = match SchedClassifier::query_tcx(iface, TcAttachType::Ingress) {
        Ok((_, progs)) => progs,
        Err(e) => {
            // Kernels without tcx: the attach itself reports what is wrong.
            tracing::debug!("cannot list tcx programs on {iface}: {e}");
            return Ok(());
        }
    };
    for p in &progs {
        if Some(p.id()) == own {
            continue;
        }
        let name = String::from_utf8_lossy(p.name());
        if p.name() == names::PROG_TC.as_bytes() {
            bail!(
                "{iface} is already served by another DaoliNet datapath (tcx ingress program \
                 {name}, id {}): another daolinet-agent (other --state-dir) owns it; \
                 stop that agent or remove the port from it first",
                p.id()
            );
        }
        tracing::warn!(
            iface,
            program = %name,
            id = p.id(),
            "another tcx ingress program is attached; it runs before the DaoliNet datapath"
        );
    }
    Ok(())
}

/// True when an OS error with one of `codes` is anywhere in `e`'s chain.
fn has_errno(e: &anyhow::Error, codes: &[i32]) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .is_some_and(|n| codes.contains(&n))
    })
}

/// Capabilities `daolinet-agent run` needs: `(bit, name)`; CAP_BPF may be
/// replaced by CAP_SYS_ADMIN (older kernels, or root).
const CAP_NET_ADMIN: (u32, &str) = (12, "CAP_NET_ADMIN");
const CAP_SYS_ADMIN: (u32, &str) = (21, "CAP_SYS_ADMIN");
const CAP_BPF: (u32, &str) = (39, "CAP_BPF");

/// The capabilities missing from the effective set `cap_eff` (the
/// `CapEff:` hex mask of `/proc/self/status`) for loading and attaching
/// the datapath.
pub fn missing_capabilities(cap_eff: u64) -> Vec<&'static str> {
    let has = |c: (u32, &str)| cap_eff & (1u64 << c.0) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push(CAP_BPF.1);
    }
    if !has(CAP_NET_ADMIN) {
        missing.push(CAP_NET_ADMIN.1);
    }
    missing
}

/// Fail with one clear message when this process cannot load and attach
/// BPF programs (not root, or capabilities dropped).
pub fn check_privileges() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow!("no CapEff line in /proc/self/status"))?;
    let missing = missing_capabilities(eff);
    if !missing.is_empty() {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        bail!(
            "daolinet-agent run loads and attaches BPF programs and needs CAP_BPF and \
             CAP_NET_ADMIN (run it as root); this process (uid {uid}) lacks {}",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// The table generation after `g` (never 0, which means "none yet").
fn next_generation(g: u32) -> u32 {
    g.wrapping_add(1).max(1)
}

/// True for map changes that can change which rule a packet matches.
/// True when the operation writes a rule that only the pipeline program
/// runs: one with instructions beyond apply-actions (its entry says so, and
/// its instructions go to RULE_EXT), or one in a wide subtable (table 0's
/// main program hands those lookups to the pipeline program).
pub fn needs_pipeline(op: &MapOp) -> bool {
    match op {
        MapOp::PutFlow(k, e) | MapOp::UpdateFlow(k, e) => {
            e.kind & ENTRY_PIPELINE != 0 || matches!(k, EntryKey::Wide(_))
        }
        MapOp::PutRuleExt(..) => true,
        MapOp::SetSubtables(_, list) => list.iter().any(|(s, _)| s.id & SUBTABLE_WIDE != 0),
        _ => false,
    }
}

fn changes_rules(op: &MapOp) -> bool {
    matches!(
        op,
        MapOp::PutFlow(..) | MapOp::UpdateFlow(..) | MapOp::DelFlow(_) | MapOp::SetSubtables(..)
    )
}

/// Held only so the program stays attached; dropping it detaches.
#[allow(dead_code)]
enum PortLink {
    Tc(SchedClassifierLink),
    Xdp(XdpLink),
}

/// A port attached to the datapath.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PortView {
    /// Interface name.
    pub name: String,
    /// OpenFlow port number.
    pub ofport: u32,
    /// Kernel ifindex.
    pub ifindex: u32,
    /// "container" or "uplink".
    pub kind: &'static str,
    /// Counters summed over CPUs.
    pub rx_packets: u64,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Packets the datapath sent to this port.
    pub tx_packets: u64,
    /// Bytes the datapath sent to this port.
    pub tx_bytes: u64,
    /// Received and dropped.
    pub rx_dropped: u64,
}

struct AttachedPort {
    info: PortInfo,
    _link: PortLink,
    /// Where its link is pinned (removed when the port is detached).
    pin: Option<PathBuf>,
    /// Pinned by this run (an earlier run's pin is never removed on a
    /// failed start: that datapath keeps forwarding).
    pinned_now: bool,
}

/// The link pinned by an earlier run of this agent at `pin`, if any (the
/// pin stays: the program stays attached while it is replaced).
fn pinned_link(pin: &Path) -> Option<FdLink> {
    if !pin.exists() {
        return None;
    }
    match PinnedLink::from_pin(pin) {
        Ok(l) => Some(FdLink::from(l)),
        Err(e) => {
            tracing::warn!(pin = %pin.display(), error = %e, "unusable pinned link: attaching anew");
            let _ = std::fs::remove_file(pin);
            None
        }
    }
}

/// Removes the pins in `dir` of `iface` other than `keep` (left for an
/// interface of the same name that was deleted and created again).
fn forget_stale_pins(dir: &Path, iface: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        let same_iface = name
            .split_once('-')
            .and_then(|(_, rest)| rest.split_once('-'))
            .is_some_and(|(_, i)| i == iface);
        if same_iface && p != keep {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Pins a new fd link at `pin` so that its program stays attached when
/// the agent stops or restarts, and gives it back as a `L`.
fn pin_link<L>(link: L, pin: &Path) -> Result<L>
where
    L: TryFrom<FdLink, Error = aya::programs::links::LinkError>,
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let fd = FdLink::try_from(link)
        .context("the link is not an fd link (kernel without tcx/bpf_link?)")?;
    let pinned = fd
        .pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(L::try_from(FdLink::from(pinned))?)
}

/// A punted packet read from the ring buffer.
#[derive(Clone, Debug)]
pub struct Punt {
    /// Metadata.
    pub header: PuntHeader,
    /// Packet bytes (up to `cap_len`).
    pub data: Vec<u8>,
}

/// What an earlier agent left in the pinned maps.
pub struct SavedRules {
    /// The subtable lists (table, subtable and wide mask), each table's in
    /// datapath order.
    pub subtables: Vec<(u8, crate::table::SubtableDesc)>,
    /// Recoverable rules by id.
    pub rules: Vec<(u32, crate::table::Rule)>,
}

/// The entry `e` with the counters of `old` when `old` is the same rule's
/// (an entry rewritten with new actions keeps counting).
fn carried(old: Option<FlowEntry>, e: &FlowEntry) -> FlowEntry {
    let mut e = *e;
    if let Some(old) = old.filter(|o| o.rule_id == e.rule_id) {
        e.packets = old.packets;
        e.bytes = old.bytes;
        e.last_used_ns = old.last_used_ns;
    }
    e
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `BPF_MAP_DELETE_BATCH`: delete `count` keys (each `key_size` bytes) in
/// one call. The kernel stops at a key that is not there (ENOENT): that
/// one is skipped and the rest deleted, so a missing key is not an error.
pub(crate) fn delete_batch(
    fd: std::os::fd::RawFd,
    keys: &[u8],
    key_size: usize,
    count: u32,
) -> Result<()> {
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
    let mut done = 0u32;
    while done < count {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done as usize * key_size..].as_ptr() as u64,
            values: 0,
            count: count - done,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attribute points at `count - done` keys that live for
        // the duration of the call; the kernel reads only those and writes
        // back `count` (how many it deleted).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e).with_context(|| format!("BPF_MAP_DELETE_BATCH of {count} entries"));
        }
        // attr.count keys were deleted; the next one is missing.
        done += attr.count + 1;
    }
    Ok(())
}

/// `BPF_MAP_UPDATE_BATCH`: write `count` keys and values in one call.
pub(crate) fn update_batch(
    fd: std::os::fd::RawFd,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the attribute points at `count` keys and values that live
    // for the duration of the call; the kernel reads only those.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("BPF_MAP_UPDATE_BATCH of {count} entries"));
    }
    Ok(())
}

/// Parse one punt ring record: a [`PuntHeader`] then `cap_len` bytes.
///
/// A VLAN tag the kernel held in skb metadata (`vlan_proto` != 0) is put
/// back into the frame after the MAC addresses, so the frame is the one
/// that arrived on the wire; `pkt_len` and `cap_len` count it, and
/// `vlan_proto` becomes 0.
pub fn parse_punt(record: &[u8]) -> Result<Punt> {
    let hlen = size_of::<PuntHeader>();
    if record.len() < hlen {
        bail!("short punt record: {} bytes", record.len());
    }
    let mut header: PuntHeader = bytemuck::pod_read_unaligned(&record[..hlen]);
    let cap = header.cap_len as usize;
    let data = record
        .get(hlen..hlen + cap)
        .ok_or_else(|| anyhow!("punt record of {} bytes, cap_len {cap}", record.len()))?;
    if header.vlan_proto == 0 || data.len() < 12 {
        return Ok(Punt {
            header,
            data: data.to_vec(),
        });
    }
    let mut framed = Vec::with_capacity(data.len() + 4);
    framed.extend_from_slice(&data[..12]);
    framed.extend_from_slice(&header.vlan_proto.to_be_bytes());
    framed.extend_from_slice(&header.vlan_tci.to_be_bytes());
    framed.extend_from_slice(&data[12..]);
    header.pkt_len = header.pkt_len.saturating_add(4);
    header.cap_len = framed.len() as u32;
    header.vlan_proto = 0;
    header.vlan_tci = 0;
    Ok(Punt {
        header,
        data: framed,
    })
}

/// The loaded datapath.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    ports: StdHashMap<String, AttachedPort>,
    /// The punt ring, taken out of `ebpf` on first use and kept mapped
    /// (mapping it per read costs an mmap/munmap of the whole ring).
    punt_ring: Option<RingBuf<MapData>>,
    /// Second handles on pinned maps, for batched updates.
    batch_maps: StdHashMap<&'static str, MapData>,
    /// Keep the links this run pinned when dropped (a clean stop: the
    /// next run takes them over); otherwise (a failed start or run) they
    /// are unpinned and detached.
    keep_links: bool,
    /// Rules the maps hold at most.
    capacity: u32,
    /// The pipeline program arrays (TC, XDP), held open: their entries
    /// last as long as a user-space handle does.
    pipelines: [ProgramArray<MapData>; 2],
    /// True once the pipeline programs are loaded and in their arrays.
    pipeline_loaded: bool,
    /// Entries of removed subtables still to be deleted.
    drains: crate::drain::Drains,
    /// Additions written on a thread of their own ([`Datapath::write_ahead`]).
    ahead: crate::ahead::Writer,
    /// Written ahead since the last settle: the generation is due.
    ahead_written: bool,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            tracing::warn!("writing flow additions: {e:#}");
        }
        if let Err(e) = self.finish_drains() {
            tracing::warn!("deleting the entries of removed subtables: {e:#}");
        }
        if self.keep_links {
            return;
        }
        for p in self.ports.values() {
            if let (Some(pin), true) = (&p.pin, p.pinned_now) {
                let _ = std::fs::remove_file(pin);
            }
        }
    }
}

/// Most rules `--max-flows` may ask for.
pub const MAX_FLOWS_LIMIT: u32 = 1 << 26;

/// The default `--max-flows` for a host with `mem_total` bytes of memory:
/// about a sixteenth of it at 1 KiB per flow (the userspace table and the
/// kernel maps together), between 65,536 and 1,048,576. The entries are
/// allocated as flows come; only the hash table's bucket array (16 bytes a
/// bucket, a power of two at least the maximum: 16 MiB for a million) is
/// made up front.
pub fn default_max_flows(mem_total: u64) -> u32 {
    (mem_total / 16 / 1024).clamp(65_536, 1 << 20) as u32
}

/// `MemTotal` of /proc/meminfo in bytes.
pub fn mem_total() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemTotal` in bytes of the text of /proc/meminfo (None without a
/// number there; a count of kB too large for bytes in a u64 saturates).
pub fn parse_mem_total(info: &str) -> Option<u64> {
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// The pinned maps whose layout the agent knows: name, key size, value
/// size. A pin whose sizes differ was made by an incompatible agent.
fn pinned_layouts() -> [(&'static str, usize, usize); 9] {
    [
        (
            names::FLOWS,
            size_of::<FlowMapKey>(),
            size_of::<FlowEntry>(),
        ),
        (
            names::FLOWS_WIDE,
            size_of::<WideMapKey>(),
            size_of::<FlowEntry>(),
        ),
        (names::SUBTABLES, 4, size_of::<Subtable>()),
        (names::PORTS, 4, size_of::<PortInfo>()),
        (
            names::SAMPLE_CONFIG,
            4,
            size_of::<daolinet_common::SampleConfig>(),
        ),
        (
            names::SAMPLE_BUCKETS,
            4,
            size_of::<daolinet_common::SampleBucket>(),
        ),
        (names::RULE_EXT, 4, size_of::<RuleExt>()),
        (names::METERS, 4, size_of::<MeterEntry>()),
        (names::GROUPS, 4, size_of::<GroupEntry>()),
    ]
}

/// Maps earlier agents pinned that this one no longer has.
const RETIRED_PINS: [&str; 2] = ["DL_RULE_META", "DL_RULE_STATS"];

/// Remove the pins in `pin_dir` when any of them has another layout than
/// this agent's (made by an incompatible version): the programs would not
/// load against them. Forwarding then starts empty, until the controller
/// installs the flows again. Returns whether it removed them.
fn drop_incompatible_pins(pin_dir: &Path) -> Result<bool> {
    let retired = RETIRED_PINS
        .iter()
        .find(|n| pin_dir.join(n).exists())
        .map(|n| format!("{n} is no longer used"));
    let stale = retired.or_else(|| {
        pinned_layouts().iter().find_map(|(name, k, v)| {
            let info = aya::maps::MapInfo::from_pin(pin_dir.join(name)).ok()?;
            let (pk, pv) = (info.key_size() as usize, info.value_size() as usize);
            ((pk, pv) != (*k, *v))
                .then(|| format!("{name}: key {pk} B, value {pv} B, now {k} and {v}"))
        })
    });
    // One subtable list per table (an agent of one table had one list).
    let stale = stale.or_else(|| {
        let info = aya::maps::MapInfo::from_pin(pin_dir.join(names::SUBTABLES)).ok()?;
        (info.max_entries() != daolinet_common::SUBTABLE_SLOTS).then(|| {
            format!(
                "{}: {} slots, now {}",
                names::SUBTABLES,
                info.max_entries(),
                daolinet_common::SUBTABLE_SLOTS
            )
        })
    });
    let Some(why) = stale else {
        return Ok(false);
    };
    tracing::warn!(
        pins = %pin_dir.display(),
        "the maps pinned by an earlier run have another layout ({why}): removed, \
         with the program links pinned with them (the old programs go: they used \
         those maps); the rules they held are gone (a controller installs them again)"
    );
    for entry in
        std::fs::read_dir(pin_dir).with_context(|| format!("listing {}", pin_dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(true)
}

/// The maps sized by the number of rules.
const RULE_MAPS: [&str; 3] = [names::FLOWS, names::FLOWS_WIDE, names::RULE_EXT];

impl Datapath {
    /// A clean stop: the programs stay attached (pinned) with the pinned
    /// maps, so the datapath keeps forwarding until the agent runs again
    /// (which takes them over without a gap) or the ports are removed.
    pub fn keep_links(&mut self) {
        self.keep_links = true;
    }

    /// Load `object` (its bytes, see [`BpfObject::bytes`]), reusing maps
    /// already pinned in `pin_dir` (so rules survive an agent restart) and
    /// verify both programs. `pin_dir` must be inside a mounted bpffs (see
    /// [`ensure_bpffs`]).
    ///
    /// The maps that grow with the rules are sized for `max_rules`. Maps
    /// pinned by an earlier run keep the size they were created with: then
    /// [`Datapath::capacity`] says what they hold (a different `max_rules`
    /// needs a fresh state directory or bpffs).
    pub fn load(object: &[u8], pin_dir: &Path, max_rules: u32) -> Result<Self> {
        if max_rules == 0 {
            bail!("the datapath must hold at least one rule");
        }
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        drop_incompatible_pins(pin_dir)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        for m in RULE_MAPS {
            loader.map_max_entries(m, max_rules);
        }
        let mut ebpf = loader.load(object).context("loading the BPF object")?;
        let mut capacity = max_rules;
        for m in RULE_MAPS {
            let info = aya::maps::MapInfo::from_pin(pin_dir.join(m))
                .with_context(|| format!("reading the size of map {m}"))?;
            capacity = capacity.min(info.max_entries());
        }
        if capacity < max_rules {
            tracing::warn!(
                capacity,
                asked = max_rules,
                pins = %pin_dir.display(),
                "the maps pinned by an earlier run hold fewer rules than asked for \
                 (--max-flows); remove the pins (a fresh state) to resize them"
            );
        }
        let tc: &mut SchedClassifier = ebpf
            .program_mut(names::PROG_TC)
            .context("no TC program in the BPF object")?
            .try_into()?;
        tc.load()
            .context("the kernel verifier rejected the TC program")?;
        let xdp: &mut Xdp = ebpf
            .program_mut(names::PROG_XDP)
            .context("no XDP program in the BPF object")?
            .try_into()?;
        xdp.load()
            .context("the kernel verifier rejected the XDP program")?;
        // The pipeline programs, which the main ones tail-call for rules
        // beyond one table of apply-actions (a program array per program
        // type: the kernel ties one to a single type).
        let take = |ebpf: &mut Ebpf, name: &str| -> Result<ProgramArray<MapData>> {
            let m = ebpf
                .take_map(name)
                .with_context(|| format!("no program array {name} in the BPF object"))?;
            Ok(ProgramArray::try_from(m)?)
        };
        let tc_pipeline = take(&mut ebpf, names::PIPELINE_TC)?;
        let xdp_pipeline = take(&mut ebpf, names::PIPELINE_XDP)?;
        let mut dp = Datapath {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            ports: StdHashMap::new(),
            punt_ring: None,
            keep_links: false,
            batch_maps: StdHashMap::new(),
            capacity,
            pipelines: [tc_pipeline, xdp_pipeline],
            pipeline_loaded: false,
            drains: Default::default(),
            ahead: Default::default(),
            ahead_written: false,
        };
        // Rules an earlier run left that need the pipeline: load it now,
        // before this run's programs are attached.
        if dp.pinned_rules_need_pipeline()? {
            dp.ensure_pipeline()?;
        }
        Ok(dp)
    }

    /// True when the pinned maps hold a rule that only the pipeline
    /// program runs (instructions beyond apply-actions, or a wide match).
    fn pinned_rules_need_pipeline(&mut self) -> Result<bool> {
        let ext: HashMap<&mut MapData, u32, RuleExt> =
            HashMap::try_from(self.map(names::RULE_EXT)?)?;
        if ext.keys().next().is_some() {
            return Ok(true);
        }
        let wide: HashMap<&mut MapData, WideMapKey, FlowEntry> =
            HashMap::try_from(self.map(names::FLOWS_WIDE)?)?;
        Ok(wide.keys().next().is_some())
    }

    /// Load the pipeline programs (TC, XDP) and put them in their program
    /// arrays, once. They are loaded only when a rule needs them: the
    /// kernel takes several times longer to verify them than the main
    /// programs, and the DaoliNet flows (one table of the fast path's
    /// actions) never tail-call them, so an agent serving those starts as
    /// fast as before.
    pub fn ensure_pipeline(&mut self) -> Result<()> {
        if self.pipeline_loaded {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(names::PROG_TC_PIPELINE)
            .context("no TC pipeline program in the BPF object")?
            .try_into()?;
        tc.load()
            .context("the kernel verifier rejected the TC pipeline program")?;
        self.pipelines[0].set(0, tc.fd()?, 0)?;
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(names::PROG_XDP_PIPELINE)
            .context("no XDP pipeline program in the BPF object")?
            .try_into()?;
        xdp.load()
            .context("the kernel verifier rejected the XDP pipeline program")?;
        self.pipelines[1].set(0, xdp.fd()?, 0)?;
        self.pipeline_loaded = true;
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "pipeline programs loaded (a rule needs more than the fast path)"
        );
        Ok(())
    }

    /// True once the pipeline programs are loaded.
    pub fn pipeline_loaded(&self) -> bool {
        self.pipeline_loaded
    }

    /// How many rules the maps hold at most (see [`Datapath::load`]).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The bpffs directory holding the pinned maps.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
    }

    /// Attach the datapath to `iface` as OpenFlow port `ofport`.
    pub fn attach_port(
        &mut self,
        iface: &str,
        ofport: u32,
        kind: PortKind,
        uplink_mode: UplinkMode,
    ) -> Result<()> {
        if self.ports.contains_key(iface) {
            bail!("port {iface} is already attached");
        }
        if let Some(p) = self.ports.values().find(|p| p.info.ofport == ofport) {
            bail!(
                "OpenFlow port {ofport} is already used by ifindex {}",
                p.info.ifindex
            );
        }
        if self.ports.len() as u32 >= MAX_PORTS {
            bail!("too many ports (at most {MAX_PORTS})");
        }
        let ifindex = ifindex(iface)?;
        // The link of an earlier run of this agent, still attached (the
        // datapath kept forwarding while the agent was away): its program is
        // replaced atomically below, never detached.
        let what = match (kind, uplink_mode) {
            (PortKind::Uplink, UplinkMode::Xdp) => "xdp",
            (PortKind::Local, _) => "egress",
            _ => "ingress",
        };
        let pin = self
            .pin_dir
            .join("links")
            .join(format!("{what}-{ifindex}-{iface}"));
        let earlier = pinned_link(&pin);
        let own = earlier
            .as_ref()
            .and_then(|l| l.info().ok())
            .map(|i| i.program_id());
        refuse_busy_port(iface, own)?;
        let slot = (0..MAX_PORTS)
            .find(|s| !self.ports.values().any(|p| p.info.slot == *s))
            .ok_or_else(|| anyhow!("no free port slot"))?;
        let info = PortInfo {
            ofport,
            ifindex,
            kind: kind as u32,
            miss: match kind {
                PortKind::Container | PortKind::Local => MissPolicy::Punt as u32,
                PortKind::Uplink => MissPolicy::Local as u32,
            },
            slot,
            // The LOCAL port's own MAC: frames handed to the host stack
            // through it are addressed to it.
            allowed_mac: match kind {
                PortKind::Local => sys_mac(iface)?,
                _ => [0; 6],
            },
            ..Default::default()
        };
        // Maps first, so the first packet after attach finds its port.
        self.write_port(&info)?;
        let link = match (kind, uplink_mode) {
            (PortKind::Uplink, UplinkMode::Xdp) => {
                let prog: &mut Xdp = self
                    .ebpf
                    .program_mut(names::PROG_XDP)
                    .context("no XDP program")?
                    .try_into()?;
                let id = match earlier {
                    Some(l) => XdpLink::try_from(l)
                        .map_err(anyhow::Error::from)
                        .and_then(|l| Ok(prog.attach_to_link(l)?))
                        .with_context(|| format!("replacing the XDP program of {iface}")),
                    None => prog
                        .attach(iface, XdpMode::Default)
                        .with_context(|| format!("attaching XDP to {iface}")),
                };
                match id {
                    Ok(id) => PortLink::Xdp(prog.take_link(id)?),
                    Err(e) => {
                        self.erase_port(&info)?;
                        if has_errno(&e, &[libc::EBUSY, libc::EEXIST]) {
                            bail!(
                                "{iface} already has an XDP program attached (another \
                                 daolinet-agent with --uplink-mode xdp, or another XDP \
                                 user): stop it or detach it (`ip link set dev {iface} xdp off`) \
                                 first"
                            );
                        }
                        return Err(e);
                    }
                }
            }
            _ => {
                let prog: &mut SchedClassifier = self
                    .ebpf
                    .program_mut(names::PROG_TC)
                    .context("no TC program")?
                    .try_into()?;
                // The LOCAL port takes what the host stack sends to it.
                let (at, what) = match kind {
                    PortKind::Local => (TcAttachType::Egress, "egress"),
                    _ => (TcAttachType::Ingress, "ingress"),
                };
                let id = match earlier {
                    Some(l) => SchedClassifierLink::try_from(l)
                        .map_err(anyhow::Error::from)
                        .and_then(|l| Ok(prog.attach_to_link(l)?))
                        .with_context(|| format!("replacing the tcx {what} program of {iface}")),
                    None => prog
                        .attach_with_options(
                            iface,
                            at,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .with_context(|| format!("attaching tcx {what} to {iface}")),
                };
                match id {
                    Ok(id) => PortLink::Tc(prog.take_link(id)?),
                    Err(e) => {
                        self.erase_port(&info)?;
                        return Err(e);
                    }
                }
            }
        };
        // Pinned (if not already): the program stays attached when the
        // agent stops, so a restart costs no traffic. A port that cannot be
        // pinned is not attached.
        let pinned_now = !pin.exists();
        let link = if !pinned_now {
            link
        } else {
            let pinned = match link {
                PortLink::Tc(l) => pin_link(l, &pin).map(PortLink::Tc),
                PortLink::Xdp(l) => pin_link(l, &pin).map(PortLink::Xdp),
            };
            match pinned {
                Ok(l) => l,
                Err(e) => {
                    self.erase_port(&info)?;
                    return Err(e);
                }
            }
        };
        // Pins of this interface under an earlier ifindex are stale.
        forget_stale_pins(&self.pin_dir.join("links"), iface, &pin);
        // Start the port's counters from zero.
        let zero =
            PerCpuValues::try_from(vec![PortStats::default(); nr_cpus().map_err(|(_, e)| e)?])?;
        let mut stats: PerCpuArray<&mut MapData, PortStats> =
            PerCpuArray::try_from(self.map(names::PORT_STATS)?)?;
        stats.set(slot, zero, 0)?;
        self.ports.insert(
            iface.to_string(),
            AttachedPort {
                info,
                _link: link,
                pin: Some(pin),
                pinned_now,
            },
        );
        Ok(())
    }

    /// Set or clear anti-spoofing on container port `ofport`: with `allowed`
    /// (MAC, IPv4) the datapath drops every frame from it with another
    /// Ethernet source, or another IPv4 source or ARP sender address
    /// (counted as `spoofed_source`); `None` turns the check off.
    pub fn set_anti_spoof(
        &mut self,
        ofport: u32,
        allowed: Option<([u8; 6], [u8; 4])>,
    ) -> Result<()> {
        let port = self
            .ports
            .values_mut()
            .find(|p| p.info.ofport == ofport && p.info.is_container())
            .ok_or_else(|| anyhow!("no container port {ofport}"))?;
        let mut info = port.info;
        match allowed {
            Some((mac, ip)) => {
                info.allowed_mac = mac;
                info.allowed_ipv4 = ip;
                info.flags |= PORT_FLAG_ANTI_SPOOF;
            }
            None => {
                info.allowed_mac = [0; 6];
                info.allowed_ipv4 = [0; 4];
                info.flags &= !PORT_FLAG_ANTI_SPOOF;
            }
        }
        port.info = info;
        self.write_port(&info)
    }

    /// Detach `iface` and forget it.
    pub fn detach_port(&mut self, iface: &str) -> Result<()> {
        let port = self
            .ports
            .remove(iface)
            .ok_or_else(|| anyhow!("no such port: {iface}"))?;
        self.erase_port(&port.info)?;
        // Without its pin, dropping the link detaches the program.
        if let Some(pin) = &port.pin {
            if let Err(e) = std::fs::remove_file(pin) {
                tracing::warn!(pin = %pin.display(), error = %e, "cannot remove the link pin");
            }
        }
        drop(port);
        Ok(())
    }

    /// Write `info` into the port maps (by ifindex and by OpenFlow port).
    /// [`Datapath::attach_port`] does this before attaching; tests of the
    /// programs call it directly.
    /// The array indexes ([`names::PORT_INDEX`], [`names::OFPORT_INDEX`])
    /// get the port too when its number fits, for the datapath's per-packet
    /// lookups.
    pub fn write_port(&mut self, info: &PortInfo) -> Result<()> {
        let mut m: HashMap<&mut MapData, u32, PortInfo> =
            HashMap::try_from(self.map(names::PORTS)?)?;
        m.insert(info.ifindex, *info, 0)?;
        let mut m: HashMap<&mut MapData, u32, PortInfo> =
            HashMap::try_from(self.map(names::OFPORTS)?)?;
        m.insert(info.ofport, *info, 0)?;
        self.set_port_slots(info, *info)
    }

    /// Write `value` into `info`'s slots of the array indexes (by ifindex
    /// and by OpenFlow port), where its numbers fit.
    fn set_port_slots(&mut self, info: &PortInfo, value: PortInfo) -> Result<()> {
        for (name, index, slots) in [
            (names::PORT_INDEX, info.ifindex, PORT_INDEX_SLOTS),
            (names::OFPORT_INDEX, info.ofport, OFPORT_INDEX_SLOTS),
        ] {
            if index < slots {
                let mut a: Array<&mut MapData, PortInfo> = Array::try_from(self.map(name)?)?;
                a.set(index, value, 0)?;
            }
        }
        Ok(())
    }

    fn erase_port(&mut self, info: &PortInfo) -> Result<()> {
        // Array slots first: a zeroed slot is empty.
        self.set_port_slots(info, PortInfo::default())?;
        let mut m: HashMap<&mut MapData, u32, PortInfo> =
            HashMap::try_from(self.map(names::PORTS)?)?;
        let _ = m.remove(&info.ifindex);
        let mut m: HashMap<&mut MapData, u32, PortInfo> =
            HashMap::try_from(self.map(names::OFPORTS)?)?;
        let _ = m.remove(&info.ofport);
        Ok(())
    }

    /// Ports with their counters, sorted by OpenFlow port number.
    pub fn ports(&mut self) -> Result<Vec<PortView>> {
        let list: Vec<(String, PortInfo)> = self
            .ports
            .iter()
            .map(|(n, p)| (n.clone(), p.info))
            .collect();
        let mut out = Vec::new();
        for (name, info) in list {
            let s = self.port_stats(info.slot)?;
            out.push(PortView {
                name,
                ofport: info.ofport,
                ifindex: info.ifindex,
                kind: if info.is_container() {
                    "container"
                } else if info.is_local() {
                    "local"
                } else {
                    "uplink"
                },
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                rx_dropped: s.rx_dropped,
            });
        }
        out.sort_by_key(|p| p.ofport);
        Ok(out)
    }

    /// Counters of port slot `slot`, summed over CPUs.
    pub fn port_stats(&mut self, slot: u32) -> Result<PortStats> {
        let m: PerCpuArray<&mut MapData, PortStats> =
            PerCpuArray::try_from(self.map(names::PORT_STATS)?)?;
        let mut s = PortStats::default();
        for v in m.get(&slot, 0)?.iter() {
            s.merge(v);
        }
        Ok(s)
    }

    /// The loaded object (programs and maps), for callers that need more
    /// than this type offers, e.g. BPF_PROG_TEST_RUN on a program fd.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Apply table changes to the maps, in order. The entries of removed
    /// subtables ([`MapOp::DrainFlows`]) are deleted afterwards, by a
    /// thread of their own (see [`crate::drain`]).
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<()> {
        self.drains.reap();
        let r = self.write_ops(ops);
        let started = self.start_drains();
        r.and(started)
    }

    /// Write `ops` in order (the entries to drain collected).
    fn write_ops(&mut self, ops: &[MapOp]) -> Result<()> {
        if ops.iter().any(needs_pipeline) {
            self.ensure_pipeline()?;
        }
        for op in ops {
            if let MapOp::PutFlow(k, _) | MapOp::UpdateFlow(k, _) = op {
                self.before_write(k.subtable())?;
            }
            match op {
                MapOp::PutFlow(EntryKey::Narrow(k), e) => self.with_room(|dp| {
                    let mut m: HashMap<&mut MapData, FlowMapKey, FlowEntry> =
                        HashMap::try_from(dp.map(names::FLOWS)?)?;
                    m.insert(k, **e, 0).context("writing a flow entry")
                })?,
                MapOp::PutFlow(EntryKey::Wide(k), e) => self.with_room(|dp| {
                    let mut m: HashMap<&mut MapData, WideMapKey, FlowEntry> =
                        HashMap::try_from(dp.map(names::FLOWS_WIDE)?)?;
                    m.insert(**k, **e, 0).context("writing a wide flow entry")
                })?,
                MapOp::UpdateFlow(EntryKey::Narrow(k), e) => {
                    let mut m: HashMap<&mut MapData, FlowMapKey, FlowEntry> =
                        HashMap::try_from(self.map(names::FLOWS)?)?;
                    // Carry the counters over. Hits between this read and
                    // the write below are lost (a few packets at most):
                    // the kernel has no partial update of a hash value.
                    let e = carried(m.get(k, 0).ok(), e);
                    m.insert(k, e, 0).context("rewriting a flow entry")?;
                }
                MapOp::UpdateFlow(EntryKey::Wide(k), e) => {
                    let mut m: HashMap<&mut MapData, WideMapKey, FlowEntry> =
                        HashMap::try_from(self.map(names::FLOWS_WIDE)?)?;
                    let e = carried(m.get(&**k, 0).ok(), e);
                    m.insert(**k, e, 0).context("rewriting a wide flow entry")?;
                }
                MapOp::DrainFlows(d) => self.drains.add(d),
                MapOp::DelFlow(EntryKey::Narrow(k)) => {
                    let mut m: HashMap<&mut MapData, FlowMapKey, FlowEntry> =
                        HashMap::try_from(self.map(names::FLOWS)?)?;
                    let _ = m.remove(k);
                }
                MapOp::DelFlow(EntryKey::Wide(k)) => {
                    let mut m: HashMap<&mut MapData, WideMapKey, FlowEntry> =
                        HashMap::try_from(self.map(names::FLOWS_WIDE)?)?;
                    let _ = m.remove(&**k);
                }
                MapOp::SetSubtables(table, list) => self.set_subtables(*table, list)?,
                MapOp::PutRuleExt(id, e) => {
                    let mut m: HashMap<&mut MapData, u32, RuleExt> =
                        HashMap::try_from(self.map(names::RULE_EXT)?)?;
                    m.insert(id, **e, 0)
                        .context("writing a rule's instructions")?;
                }
                MapOp::DelRuleExt(id) => {
                    let mut m: HashMap<&mut MapData, u32, RuleExt> =
                        HashMap::try_from(self.map(names::RULE_EXT)?)?;
                    let _ = m.remove(id);
                }
                MapOp::PutGroup(id, g) => {
                    let mut m: HashMap<&mut MapData, u32, GroupEntry> =
                        HashMap::try_from(self.map(names::GROUPS)?)?;
                    m.insert(id, **g, 0).context("writing a group")?;
                }
                MapOp::DelGroup(id) => {
                    let mut m: HashMap<&mut MapData, u32, GroupEntry> =
                        HashMap::try_from(self.map(names::GROUPS)?)?;
                    let _ = m.remove(id);
                }
                MapOp::ResetGroupStats(slot) => {
                    let n = nr_cpus().map_err(|(_, e)| e)?;
                    let mut m: PerCpuArray<&mut MapData, GroupStats> =
                        PerCpuArray::try_from(self.map(names::GROUP_STATS)?)?;
                    m.set(
                        *slot,
                        PerCpuValues::try_from(vec![GroupStats::default(); n])?,
                        0,
                    )?;
                }
                MapOp::PutMeter(id, e) => {
                    let mut m: HashMap<&mut MapData, u32, MeterEntry> =
                        HashMap::try_from(self.map(names::METERS)?)?;
                    m.insert(id, e, 0).context("writing a meter")?;
                }
                MapOp::DelMeter(id) => {
                    let mut m: HashMap<&mut MapData, u32, MeterEntry> =
                        HashMap::try_from(self.map(names::METERS)?)?;
                    let _ = m.remove(id);
                }
                MapOp::ResetMeterStats(slot) => {
                    let n = nr_cpus().map_err(|(_, e)| e)?;
                    let mut m: PerCpuArray<&mut MapData, MeterStats> =
                        PerCpuArray::try_from(self.map(names::METER_STATS)?)?;
                    m.set(
                        *slot,
                        PerCpuValues::try_from(vec![MeterStats::default(); n])?,
                        0,
                    )?;
                }
            }
        }
        if ops.iter().any(changes_rules) {
            self.bump_generation()?;
        }
        Ok(())
    }

    /// Apply table changes like [`Datapath::apply`], but write runs of
    /// additions (metadata, new classifier entries) with one
    /// `BPF_MAP_UPDATE_BATCH` call per map instead of one call per entry.
    /// Within such a run the metadata goes first, then the entries (later
    /// writes of the same key win, as one by one); everything else keeps
    /// its place. Falls back to one by one when the kernel refuses a batch.
    ///
    /// Runs of removals (classifier entries, metadata) are deleted with one
    /// `BPF_MAP_DELETE_BATCH` per map the same way.
    ///
    /// The entries of removed subtables ([`MapOp::DrainFlows`]) are deleted
    /// afterwards, by a thread of their own (see [`crate::drain`]).
    pub fn apply_batched(&mut self, ops: &[MapOp]) -> Result<()> {
        // What was written ahead comes first; if it failed, none of
        // `ops` is written (as when a batch fails part way).
        self.settle()?;
        self.drains.reap();
        let r = self.write_batched(ops);
        let started = self.start_drains();
        r.and(started)
    }

    fn write_batched(&mut self, ops: &[MapOp]) -> Result<()> {
        if ops.iter().any(needs_pipeline) {
            self.ensure_pipeline()?;
        }
        let adds = |o: &MapOp| matches!(o, MapOp::PutFlow(EntryKey::Narrow(_), _));
        let dels = |o: &MapOp| matches!(o, MapOp::DelFlow(EntryKey::Narrow(_)));
        let mut i = 0;
        while i < ops.len() {
            let run = ops[i..].iter().take_while(|o| adds(o)).count();
            let del_run = ops[i..].iter().take_while(|o| dels(o)).count();
            if run >= 8 {
                let seg = &ops[i..i + run];
                if let Err(e) = self.batch_adds(seg) {
                    tracing::debug!("batched map update refused ({e:#}), writing one by one");
                    self.write_ops(seg)?;
                }
                i += run;
            } else if del_run >= 8 {
                let seg = &ops[i..i + del_run];
                if let Err(e) = self.batch_dels(seg) {
                    tracing::debug!("batched map delete refused ({e:#}), deleting one by one");
                    self.write_ops(seg)?;
                }
                i += del_run;
            } else {
                let n = run.max(1);
                self.write_ops(&ops[i..i + n])?;
                i += n;
            }
        }
        if ops.iter().any(changes_rules) {
            self.bump_generation()?;
        }
        Ok(())
    }

    /// Start writing `ops` on the writer thread and return while it
    /// writes, if they are all additions to the compact classifier map
    /// and nothing else must come first (no subtable is being drained,
    /// see [`crate::drain`]): `ops` is then emptied. Otherwise `ops` is
    /// left as it is, to be written by [`Datapath::apply_batched`].
    /// Whatever is written ahead is waited for by the next
    /// [`Datapath::apply_batched`] (or [`Datapath::settle`]), which
    /// returns its failure.
    pub fn write_ahead(&mut self, ops: &mut Vec<MapOp>) {
        self.drains.reap();
        let narrow_add = |o: &MapOp| matches!(o, MapOp::PutFlow(EntryKey::Narrow(_), _));
        if ops.is_empty() || self.drains.busy() || !ops.iter().all(narrow_add) {
            return;
        }
        if ops.iter().any(needs_pipeline) && self.ensure_pipeline().is_err() {
            // Left for the synchronous write, which reports it.
            return;
        }
        let mut part = crate::ahead::Part {
            keys: Vec::with_capacity(ops.len() * size_of::<FlowMapKey>()),
            values: Vec::with_capacity(ops.len() * size_of::<FlowEntry>()),
            count: 0,
        };
        for op in ops.iter() {
            if let MapOp::PutFlow(EntryKey::Narrow(k), e) = op {
                part.keys.extend_from_slice(bytemuck::bytes_of(k));
                part.values.extend_from_slice(bytemuck::bytes_of(&**e));
                part.count += 1;
            }
        }
        let fd = match self.batch_fd(names::FLOWS) {
            Ok(fd) => fd,
            Err(_) => return,
        };
        let dup = || -> Result<std::os::fd::OwnedFd> {
            // SAFETY: `fd` belongs to a map held in `batch_maps`, open
            // for the duration of this borrow.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            Ok(b.try_clone_to_owned()?)
        };
        match self.ahead.submit(part, dup) {
            Ok(()) => {
                self.ahead_written = true;
                ops.clear();
            }
            Err(e) => tracing::debug!("no write ahead ({e:#}): written in order instead"),
        }
    }

    /// Wait for the additions written ahead ([`Datapath::write_ahead`]);
    /// the first failure among them, if any. After a success the
    /// datapath's rule generation is bumped, as after any write of rules.
    pub fn settle(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.ahead_written) {
            return Ok(());
        }
        self.ahead.settle()?;
        self.bump_generation()
    }

    fn batch_fd(&mut self, name: &'static str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        if !self.batch_maps.contains_key(name) {
            let m = MapData::from_pin(self.pin_dir.join(name))
                .with_context(|| format!("opening pinned map {name}"))?;
            self.batch_maps.insert(name, m);
        }
        self.batch_maps
            .get(name)
            .map(|m| m.fd().as_fd().as_raw_fd())
            .ok_or_else(|| anyhow!("map {name} unavailable"))
    }

    fn batch_adds(&mut self, seg: &[MapOp]) -> Result<()> {
        let (mut fk, mut fv) = (Vec::new(), Vec::new());
        let mut nf = 0u32;
        let mut last_sub = None;
        for op in seg {
            let MapOp::PutFlow(EntryKey::Narrow(k), e) = op else {
                bail!("not an addition");
            };
            if last_sub != Some(k.subtable) {
                self.before_write(k.subtable)?;
                last_sub = Some(k.subtable);
            }
            fk.extend_from_slice(bytemuck::bytes_of(k));
            fv.extend_from_slice(bytemuck::bytes_of(&**e));
            nf += 1;
        }
        if nf > 0 {
            self.with_room(|dp| update_batch(dp.batch_fd(names::FLOWS)?, &fk, &fv, nf))?;
        }
        Ok(())
    }

    fn batch_dels(&mut self, seg: &[MapOp]) -> Result<()> {
        let mut fk = Vec::new();
        let mut nf = 0u32;
        for op in seg {
            let MapOp::DelFlow(EntryKey::Narrow(k)) = op else {
                bail!("not a removal");
            };
            fk.extend_from_slice(bytemuck::bytes_of(k));
            nf += 1;
        }
        if nf > 0 {
            delete_batch(
                self.batch_fd(names::FLOWS)?,
                &fk,
                size_of::<FlowMapKey>(),
                nf,
            )?;
        }
        Ok(())
    }

    /// Before an entry of subtable `sub` is written: the entries of an
    /// earlier subtable with that id (ids are not used again, but they
    /// wrap) are deleted first.
    fn before_write(&mut self, sub: u32) -> Result<()> {
        if self.drains.busy() && self.drains.pending(sub) {
            self.finish_drains()?;
        }
        Ok(())
    }

    /// Run a write; if it fails while entries of removed subtables are
    /// still being deleted (the map may have no room for another entry
    /// until they are), wait for them and run it again.
    fn with_room(&mut self, mut write: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        match write(self) {
            Err(e) if self.drains.busy() => {
                tracing::debug!("map write failed during a drain ({e:#}): finishing the drain");
                self.finish_drains()?;
                write(self)
            }
            r => r,
        }
    }

    /// Duplicates of the classifier maps' descriptors, for a drain.
    fn drain_fds(&mut self) -> Result<crate::drain::Fds> {
        use std::os::fd::BorrowedFd;
        let mut dup = |name| -> Result<std::os::fd::OwnedFd> {
            let fd = self.batch_fd(name)?;
            // SAFETY: `fd` belongs to a map held in `batch_maps`, open
            // for the duration of this borrow.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            Ok(b.try_clone_to_owned()?)
        };
        Ok((dup(names::FLOWS)?, dup(names::FLOWS_WIDE)?))
    }

    /// Hand the entries collected from the operations just written to a
    /// drain thread.
    fn start_drains(&mut self) -> Result<()> {
        if !self.drains.ready() {
            return Ok(());
        }
        let fds = match self.drain_fds() {
            Ok(fds) => fds,
            Err(e) => {
                // Not left collected: the next start removes them.
                let _ = self.drains.finish(None);
                return Err(e.context("starting the deletion of removed subtables' entries"));
            }
        };
        self.drains.start(fds)
    }

    /// Delete every entry of removed subtables still to be deleted, and
    /// return when it is done.
    pub fn finish_drains(&mut self) -> Result<()> {
        if !self.drains.busy() {
            return Ok(());
        }
        match self.drain_fds() {
            Ok(fds) => self.drains.finish(Some(fds)),
            Err(e) => {
                let _ = self.drains.finish(None);
                Err(e)
            }
        }
    }

    /// Hold the deletion of removed subtables' entries until released
    /// (`false`): for tests, which look at the datapath while those
    /// deletions have not run yet. A release starts them.
    pub fn hold_drains(&mut self, held: bool) -> Result<()> {
        self.drains.hold(held);
        if held {
            Ok(())
        } else {
            self.start_drains()
        }
    }

    /// True while entries of removed subtables are still to be deleted.
    pub fn draining(&mut self) -> bool {
        self.drains.reap();
        self.drains.busy()
    }

    fn set_subtables(&mut self, table: u8, list: &[crate::table::SubtableDesc]) -> Result<()> {
        if list.len() > MAX_SUBTABLES {
            bail!("{} subtables > {MAX_SUBTABLES}", list.len());
        }
        if u32::from(table) >= N_TABLES {
            bail!("no table {table}");
        }
        let base = u32::from(table) * MAX_SUBTABLES as u32;
        // The wide masks first: a wide subtable is walked only once its
        // slot in the subtable list names it.
        {
            let mut x: Array<&mut MapData, FlowKeyExt> =
                Array::try_from(self.map(names::SUBTABLE_EXT)?)?;
            for (i, (_, ext)) in list.iter().enumerate() {
                x.set(base + i as u32, *ext, 0)?;
            }
        }
        let mut a: Array<&mut MapData, Subtable> = Array::try_from(self.map(names::SUBTABLES)?)?;
        for (i, (s, _)) in list.iter().enumerate() {
            a.set(base + i as u32, *s, 0)?;
        }
        let flags = if list.iter().any(|(s, _)| s.id & SUBTABLE_WIDE != 0) {
            TABLE_WIDE
        } else {
            0
        };
        if table == 0 {
            let mut c: Array<&mut MapData, DatapathConfig> =
                Array::try_from(self.map(names::CONFIG)?)?;
            let old = c.get(&0, 0)?;
            c.set(
                0,
                DatapathConfig {
                    n_subtables: list.len() as u32,
                    generation: next_generation(old.generation),
                    flags,
                    ..old
                },
                0,
            )?;
        } else {
            let mut t: Array<&mut MapData, TableConfig> =
                Array::try_from(self.map(names::TABLES)?)?;
            t.set(
                u32::from(table),
                TableConfig {
                    n_subtables: list.len() as u32,
                    flags,
                },
                0,
            )?;
        }
        Ok(())
    }

    /// Lookups and matches of table `table` (1 and up), summed over CPUs.
    pub fn table_stats(&mut self, table: u8) -> Result<TableStats> {
        let m: PerCpuArray<&mut MapData, TableStats> =
            PerCpuArray::try_from(self.map(names::TABLE_STATS)?)?;
        let mut s = TableStats::default();
        for v in m.get(&u32::from(table), 0)?.iter() {
            s.lookups += v.lookups;
            s.matched += v.matched;
        }
        Ok(s)
    }

    /// A group's counters (by stats slot), summed over CPUs.
    pub fn group_stats(&mut self, slot: u32) -> Result<GroupStats> {
        let m: PerCpuArray<&mut MapData, GroupStats> =
            PerCpuArray::try_from(self.map(names::GROUP_STATS)?)?;
        let mut s = GroupStats::default();
        for v in m.get(&slot, 0)?.iter() {
            s.packets += v.packets;
            s.bytes += v.bytes;
            for b in 0..s.bucket_packets.len() {
                s.bucket_packets[b] += v.bucket_packets[b];
                s.bucket_bytes[b] += v.bucket_bytes[b];
            }
        }
        Ok(s)
    }

    /// A meter's counters (by stats slot), summed over CPUs.
    pub fn meter_stats(&mut self, slot: u32) -> Result<MeterStats> {
        let m: PerCpuArray<&mut MapData, MeterStats> =
            PerCpuArray::try_from(self.map(names::METER_STATS)?)?;
        let mut s = MeterStats::default();
        for v in m.get(&slot, 0)?.iter() {
            s.packets += v.packets;
            s.bytes += v.bytes;
            s.band_packets += v.band_packets;
            s.band_bytes += v.band_bytes;
        }
        Ok(s)
    }

    /// Let punts wake the reader through the TAP device `ifindex` (0: the
    /// punt ring's own wake-up only); see [`DatapathConfig::punt_bell`].
    pub fn set_punt_bell(&mut self, ifindex: u32) -> Result<()> {
        let mut c: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map(names::CONFIG)?)?;
        let mut cfg = c.get(&0, 0)?;
        cfg.punt_bell = ifindex;
        c.set(0, cfg, 0)?;
        Ok(())
    }

    /// Invalidate the datapath's exact-match cache after rule changes
    /// (see [`DatapathConfig::generation`]).
    fn bump_generation(&mut self) -> Result<()> {
        let mut c: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map(names::CONFIG)?)?;
        let mut cfg = c.get(&0, 0)?;
        cfg.generation = next_generation(cfg.generation);
        c.set(0, cfg, 0)?;
        Ok(())
    }

    /// Read back the rules an earlier agent left in the pinned maps, from
    /// the classifier entries. Rules shadowed by a higher priority one with
    /// the same match have no entry of their own and are not recovered.
    pub fn saved_rules(&mut self) -> Result<SavedRules> {
        let mut counts = Vec::new();
        {
            let c: Array<&mut MapData, DatapathConfig> = Array::try_from(self.map(names::CONFIG)?)?;
            counts.push(c.get(&0, 0)?.n_subtables.min(MAX_SUBTABLES as u32));
        }
        {
            let t: Array<&mut MapData, TableConfig> = Array::try_from(self.map(names::TABLES)?)?;
            for table in 1..N_TABLES {
                counts.push(t.get(&table, 0)?.n_subtables.min(MAX_SUBTABLES as u32));
            }
        }
        let mut subs: Vec<(u8, crate::table::SubtableDesc)> = Vec::new();
        {
            let a: Array<&mut MapData, Subtable> = Array::try_from(self.map(names::SUBTABLES)?)?;
            for (table, n) in counts.iter().enumerate() {
                for i in 0..*n {
                    let slot = table as u32 * MAX_SUBTABLES as u32 + i;
                    subs.push((table as u8, (a.get(&slot, 0)?, FlowKeyExt::default())));
                }
            }
        }
        {
            let x: Array<&mut MapData, FlowKeyExt> =
                Array::try_from(self.map(names::SUBTABLE_EXT)?)?;
            let mut seen = [0u32; N_TABLES as usize];
            for (table, (s, ext)) in subs.iter_mut() {
                let t = usize::from(*table);
                let slot = *table as u32 * MAX_SUBTABLES as u32 + seen[t];
                seen[t] += 1;
                if s.id & SUBTABLE_WIDE != 0 {
                    *ext = x.get(&slot, 0)?;
                }
            }
        }
        let exts: StdHashMap<u32, RuleExt> = {
            let m: HashMap<&mut MapData, u32, RuleExt> =
                HashMap::try_from(self.map(names::RULE_EXT)?)?;
            m.iter().filter_map(|r| r.ok()).collect()
        };
        tracing::debug!(
            subtables = subs.len(),
            "reading rules left in the pinned maps"
        );
        // Each classifier entry holds a whole rule: its table and mask
        // come from its subtable, its other instructions from RULE_EXT.
        let by_id: StdHashMap<u32, (u8, FullKey)> = subs
            .iter()
            .map(|(t, (s, ext))| {
                (
                    s.id,
                    (
                        *t,
                        FullKey {
                            key: s.mask,
                            ext: *ext,
                        },
                    ),
                )
            })
            .collect();
        let rule = |table: u8, key: FullKey, mask: FullKey, e: &FlowEntry| crate::table::Rule {
            actions: e.actions[..(e.n_actions as usize).min(e.actions.len())].to_vec(),
            ext: if e.kind & ENTRY_PIPELINE != 0 {
                exts.get(&e.rule_id).copied().map(Box::new)
            } else {
                None
            },
            cookie: e.cookie,
            idle_timeout: e.idle_timeout,
            hard_timeout: e.hard_timeout,
            flags: e.flags,
            ..crate::table::Rule::matching(table, e.priority as u16, &key, &mask)
        };
        let mut rules = Vec::new();
        // Entries of subtables in no list: a drain an earlier run did not
        // finish (see crate::drain). No packet reaches them; they go now,
        // before their subtable ids can be given out again.
        let mut orphans = crate::table::Drained::default();
        {
            let flows: HashMap<&mut MapData, FlowMapKey, FlowEntry> =
                HashMap::try_from(self.map(names::FLOWS)?)?;
            for kv in flows.iter() {
                let (k, e) = kv?;
                if let Some((t, mask)) = by_id.get(&k.subtable) {
                    let key = crate::table::full(k.key);
                    rules.push((e.rule_id, rule(*t, key, *mask, &e)));
                } else {
                    orphans.push(EntryKey::Narrow(k));
                }
            }
        }
        {
            let wide: HashMap<&mut MapData, WideMapKey, FlowEntry> =
                HashMap::try_from(self.map(names::FLOWS_WIDE)?)?;
            for kv in wide.iter() {
                let (k, e) = kv?;
                if let Some((t, mask)) = by_id.get(&k.subtable) {
                    rules.push((e.rule_id, rule(*t, k.key, *mask, &e)));
                } else {
                    orphans.push(EntryKey::Wide(Box::new(k)));
                }
            }
        }
        if !orphans.is_empty() {
            let n = orphans.len();
            let mut d = crate::drain::Drains::default();
            d.add(&orphans);
            d.finish(Some(self.drain_fds()?))?;
            tracing::info!(
                entries = n,
                "entries of removed subtables an earlier run left deleted"
            );
        }
        Ok(SavedRules {
            subtables: subs,
            rules,
        })
    }

    /// The counters of the classifier entry at `at`, if it is rule `id`'s.
    pub fn rule_stats(&mut self, id: u32, at: &EntryKey) -> Result<Option<RuleStats>> {
        // An entry being written ahead is read once written; a failure
        // waits for the next settle.
        self.ahead.wait();
        let e = match at {
            EntryKey::Narrow(k) => {
                let m: HashMap<&mut MapData, FlowMapKey, FlowEntry> =
                    HashMap::try_from(self.map(names::FLOWS)?)?;
                m.get(k, 0).ok()
            }
            EntryKey::Wide(k) => {
                let m: HashMap<&mut MapData, WideMapKey, FlowEntry> =
                    HashMap::try_from(self.map(names::FLOWS_WIDE)?)?;
                m.get(&**k, 0).ok()
            }
        };
        Ok(e.filter(|e| e.rule_id == id).map(|e| RuleStats {
            packets: e.packets,
            bytes: e.bytes,
            last_used_ns: e.last_used_ns,
        }))
    }

    /// The counters of rule `id`, found by walking the classifier and
    /// summing every entry that names it (for tests and tools that write
    /// entries by hand; the agent's rules have one entry each, read with
    /// one lookup by [`Datapath::rule_stats`]).
    pub fn find_rule_stats(&mut self, id: u32) -> Result<Option<RuleStats>> {
        // Entries of removed subtables may name a rule id given out again.
        self.finish_drains()?;
        let mut entries: Vec<FlowEntry> = Vec::new();
        {
            let m: HashMap<&mut MapData, FlowMapKey, FlowEntry> =
                HashMap::try_from(self.map(names::FLOWS)?)?;
            for kv in m.iter() {
                let e = kv?.1;
                if e.rule_id == id {
                    entries.push(e);
                }
            }
        }
        {
            let w: HashMap<&mut MapData, WideMapKey, FlowEntry> =
                HashMap::try_from(self.map(names::FLOWS_WIDE)?)?;
            for kv in w.iter() {
                let e = kv?.1;
                if e.rule_id == id {
                    entries.push(e);
                }
            }
        }
        let mut found: Option<RuleStats> = None;
        for e in entries {
            found.get_or_insert_default().merge(&RuleStats {
                packets: e.packets,
                bytes: e.bytes,
                last_used_ns: e.last_used_ns,
            });
        }
        Ok(found)
    }

    /// Drop counters per reason, summed over CPUs.
    pub fn drops(&mut self) -> Result<Vec<(DropReason, u64)>> {
        let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map(names::DROPS)?)?;
        let mut out = Vec::new();
        for r in DropReason::ALL {
            out.push((r, m.get(&(r as u32), 0)?.iter().sum()));
        }
        Ok(out)
    }

    /// Counters of the port with OpenFlow number `ofport`, if attached.
    pub fn ofport_stats(&mut self, ofport: u32) -> Option<PortStats> {
        let slot = self
            .ports
            .values()
            .find(|p| p.info.ofport == ofport)?
            .info
            .slot;
        self.port_stats(slot).ok()
    }

    /// A duplicate of the punt ring buffer's file descriptor, to wait for
    /// punts with epoll (it becomes readable when records are submitted).
    pub fn punt_ring_fd(&mut self) -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        Ok(self.punt_ring()?.as_fd().try_clone_to_owned()?)
    }

    fn punt_ring(&mut self) -> Result<&mut RingBuf<MapData>> {
        if self.punt_ring.is_none() {
            let map = self
                .ebpf
                .take_map(names::PUNTS)
                .ok_or_else(|| anyhow!("map {} missing from the BPF object", names::PUNTS))?;
            self.punt_ring = Some(RingBuf::try_from(map)?);
        }
        self.punt_ring
            .as_mut()
            .ok_or_else(|| anyhow!("punt ring unavailable"))
    }

    /// Drain the punt ring buffer. A record that is too short for its own
    /// header or `cap_len` comes back as an error in its slot; the others
    /// are still returned.
    pub fn punts(&mut self) -> Result<Vec<Result<Punt>>> {
        let ring = self.punt_ring()?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(parse_punt(&item));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn the_default_flow_limit_follows_the_host_memory() {
        assert_eq!(default_max_flows(0), 65_536);
        assert_eq!(default_max_flows(1 << 30), 65_536);
        assert_eq!(default_max_flows(8 << 30), 524_288);
        assert_eq!(default_max_flows(24 << 30), 1_048_576);
        assert!(mem_total().is_some_and(|m| m > 0));
    }

    /// /proc/meminfo is the kernel's text: a MemTotal too large for bytes
    /// in a u64 used to overflow (a panic in debug builds).
    #[test]
    fn mem_total_parses_meminfo_and_saturates() {
        let info = "MemFree:  100 kB\nMemTotal:       16314540 kB\nBuffers: 1 kB\n";
        assert_eq!(parse_mem_total(info), Some(16_314_540 * 1024));
        let huge = format!("MemTotal: {} kB\n", u64::MAX / 2);
        assert_eq!(parse_mem_total(&huge), Some(u64::MAX));
        assert_eq!(default_max_flows(u64::MAX), 1_048_576);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn missing_capabilities_are_named() {
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_NET_ADMIN"]);
        assert!(missing_capabilities(u64::MAX).is_empty());
        // CAP_SYS_ADMIN stands in for CAP_BPF.
        assert!(missing_capabilities((1 << 21) | (1 << 12)).is_empty());
        assert_eq!(missing_capabilities(1 << 39), vec!["CAP_NET_ADMIN"]);
        assert_eq!(missing_capabilities(1 << 12), vec!["CAP_BPF"]);
    }
}

#[cfg(test)]
mod punt_tests {
    use super::*;

    fn record(h: PuntHeader, data: &[u8]) -> Vec<u8> {
        let mut r = bytemuck::bytes_of(&h).to_vec();
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn a_tag_held_in_metadata_is_put_back_into_the_frame() {
        // The kernel untags on receive: the bytes lack the 802.1Q tag.
        let untagged: Vec<u8> = (0u8..12).chain([0x08, 0x00, 0x45, 0]).collect();
        let h = PuntHeader {
            pkt_len: 100,
            cap_len: untagged.len() as u32,
            vlan_proto: 0x8100,
            vlan_tci: 0x6064, // PCP 3, VID 100
            ..Default::default()
        };
        let p = parse_punt(&record(h, &untagged)).unwrap();
        let want: Vec<u8> = (0u8..12)
            .chain([0x81, 0x00, 0x60, 0x64, 0x08, 0x00, 0x45, 0])
            .collect();
        assert_eq!(p.data, want);
        assert_eq!((p.header.pkt_len, p.header.cap_len), (104, 20));
        assert_eq!(p.header.vlan_proto, 0);
        // Without a tag in metadata the bytes are the frame.
        let h = PuntHeader {
            cap_len: untagged.len() as u32,
            ..Default::default()
        };
        assert_eq!(parse_punt(&record(h, &untagged)).unwrap().data, untagged);
        assert!(parse_punt(&record(h, &untagged[..4])).is_err());
    }
}

#[cfg(test)]
mod pipeline_need_tests {
    use super::*;
    use crate::compile::{compile_instructions, compile_match};
    use crate::table::{Rule, RuleTable};
    use daolinet_openflow as of;

    /// The map operations of adding `flow` to `table` of an empty switch.
    fn ops_of(table: u8, flow: &str) -> Vec<MapOp> {
        let fm: of::FlowMod = flow.parse().expect("flow syntax");
        let (key, mask) = compile_match(&fm.match_).expect("match");
        let c = compile_instructions(&fm.instructions, table).expect("instructions");
        let mut t = RuleTable::new();
        t.insert(Rule {
            actions: c.apply,
            ext: c.ext.map(Box::new),
            ..Rule::matching(table, fm.priority, &key, &mask)
        })
        .expect("insert")
        .1
    }

    #[test]
    fn only_rules_beyond_the_fast_path_load_the_pipeline_programs() {
        // DaoliNet's flows: one table of the fast path's actions.
        for f in [
            "priority=100,ip,in_port=1,nw_src=10.1.0.2,nw_dst=10.1.0.3 \
             actions=set_field:02:00:00:00:00:02->eth_src,set_field:172.31.0.2->ip_src,\
             set_field:172.31.0.3->ip_dst,output:65000",
            "priority=10,arp actions=CONTROLLER:65535",
            "priority=5,in_port=2 actions=drop",
        ] {
            assert!(!ops_of(0, f).iter().any(needs_pipeline), "{f}");
        }
        // Instructions beyond apply-actions, actions beyond the fast path,
        // a wide match.
        for f in [
            "ip actions=goto_table:1",
            "ip actions=write_metadata:0x1/0xff,output:1",
            "ip actions=write_actions(output:2)",
            "in_port=1 actions=push_vlan:0x8100,output:2",
            "metadata=0x1 actions=output:2",
            "ipv6,ipv6_dst=2001:db8::1 actions=output:2",
        ] {
            assert!(ops_of(0, f).iter().any(needs_pipeline), "{f}");
        }
    }
}
