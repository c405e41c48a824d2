//! Loading the datapath object and running its programs with BPF_PROG_TEST_RUN.
//!
//! - [`Datapath`] loads the BPF object the agent embeds (or
//!   `$DAOLINET_BPF_OBJECT` when set, as the agent does) through its own
//!   loader ([`daolinet_agent::datapath::Datapath`]), with its maps pinned in
//!   a private bpffs of the test lab (unmounted again on drop), and offers
//!   typed access to the maps (again the agent's code). Tests first call
//!   `daolinet_testlab::require(&[Need::Root, Need::BpfObject])`.
//! - [`prog_test_run`] is the raw `bpf(BPF_PROG_TEST_RUN)` syscall (aya 0.14
//!   does not expose it; the test lab's `prog_test_run`); [`Datapath::run_tc`] and [`Datapath::run_xdp`]
//!   wrap it with the right context (`__sk_buff` / `xdp_md`).
//!
//! Context notes (net/bpf/test_run.c, kernel 6.x):
//! - skb: `skb->dev` is the device of `__sk_buff.ifindex` when that is > 1,
//!   else the namespace's loopback; either way the program reads the
//!   ifindex of that device (1 = `lo`). Only a few ctx fields may be set
//!   (ifindex, mark, priority, cb, tstamp, wire_len, gso_*, hwtstamp).
//! - xdp: `xdp_md.ingress_ifindex` must name a real device (its rx queue 0
//!   is used; `lo` works), `data_end` must equal the packet length, and the
//!   packet must be at least 14 bytes.
//! - Redirect helpers only record the target; the verdict (TC_ACT_REDIRECT,
//!   XDP_REDIRECT) is returned and nothing is sent. `bpf_clone_redirect`
//!   does transmit a copy, so tests should not clone to real devices.

use std::{
    os::fd::{AsFd, AsRawFd, FromRawFd, RawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::Ebpf;
use daolinet_agent::datapath::{self as agent_dp, BpfObject};
use daolinet_agent::table::MapOp;
use daolinet_common::{
    maps as names, DropReason, FlowEntry, FlowKey, FlowMapKey, PortInfo, PortStats, RuleStats,
    Subtable,
};
use daolinet_testlab::Bpffs;

pub use daolinet_agent::datapath::{Punt, OBJECT_ENV};

/// `TC_ACT_OK`: pass to the stack.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`: drop.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`: redirected (bpf_redirect / bpf_redirect_peer).
pub const TC_ACT_REDIRECT: u32 = 7;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// Size of the kernel's `struct __sk_buff`.
pub const SK_BUFF_CTX_SIZE: usize = 192;
/// Offset of `ifindex` in `struct __sk_buff`.
const SK_BUFF_IFINDEX_OFF: usize = 40;
/// Size of the kernel's `struct xdp_md`.
pub const XDP_MD_SIZE: usize = 24;

/// The BPF object an agent started without `--bpf-object` loads:
/// `$DAOLINET_BPF_OBJECT` if set, else the one embedded in the agent.
pub fn object() -> BpfObject {
    BpfObject::choose(None)
}

/// Run `prog_fd` once on `packet` with BPF_PROG_TEST_RUN; `ctx_in` is the
/// program context (`__sk_buff` or `xdp_md` bytes). Returns the program's
/// return value and the packet as the program left it.
pub fn prog_test_run(
    prog_fd: RawFd,
    packet: &[u8],
    ctx_in: Option<&[u8]>,
) -> Result<(u32, Vec<u8>)> {
    let (ret, out, _) = prog_test_run_repeat(prog_fd, packet, ctx_in, 1)?;
    Ok((ret, out))
}

/// Like [`prog_test_run`], but the kernel runs the program `repeat` times
/// on the same packet (which is *not* restored between runs) and also
/// returns the mean run time in nanoseconds.
pub fn prog_test_run_repeat(
    prog_fd: RawFd,
    packet: &[u8],
    ctx_in: Option<&[u8]>,
    repeat: u32,
) -> Result<(u32, Vec<u8>, u32)> {
    let run = daolinet_testlab::prog_test_run(prog_fd, packet, ctx_in, repeat)
        .context("bpf(BPF_PROG_TEST_RUN)")?;
    Ok((run.retval, run.packet, run.duration_ns))
}

/// A `__sk_buff` test context with `ifindex` set.
pub fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; SK_BUFF_CTX_SIZE];
    ctx[SK_BUFF_IFINDEX_OFF..SK_BUFF_IFINDEX_OFF + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// An `xdp_md` test context for a packet of `len` bytes on `ingress_ifindex`.
pub fn xdp_ctx(len: usize, ingress_ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; XDP_MD_SIZE];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes()); // data_end
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

/// Counters for the agent's flow table: none (fresh rules).
pub struct NoCounters;

impl daolinet_agent::oftable::Counters for NoCounters {
    fn rule(&mut self, _: u32, _: &daolinet_agent::table::EntryKey) -> RuleStats {
        RuleStats::default()
    }
    fn port(&mut self, _: u32) -> Option<PortStats> {
        None
    }
}

/// The datapath object loaded for a test, with its maps pinned in a private
/// bpffs that is unmounted on drop.
pub struct Datapath {
    dp: Option<agent_dp::Datapath>,
    pin_dir: PathBuf,
    // Dropped after `dp` (declaration order): unpins everything.
    _bpffs: Bpffs,
}

impl Datapath {
    /// Load [`object`] and both programs (through the verifier).
    pub fn load() -> Result<Self> {
        let object = object().bytes()?;
        let tag = daolinet_testlab::fresh_tag();
        let bpffs = Bpffs::mount(PathBuf::from(format!("/run/daolinet-{tag}-bpffs")));
        let pin_dir = bpffs.path().join("daolinet");
        let dp = agent_dp::Datapath::load(&object, &pin_dir, daolinet_common::MAX_RULES)?;
        Ok(Datapath {
            dp: Some(dp),
            pin_dir,
            _bpffs: bpffs,
        })
    }

    /// The bpffs directory the maps are pinned in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Load the object again over the same pins, as a restarted agent does.
    pub fn reload(&mut self) -> Result<()> {
        drop(self.dp.take());
        self.dp = Some(agent_dp::Datapath::load(
            &object().bytes()?,
            &self.pin_dir,
            daolinet_common::MAX_RULES,
        )?);
        Ok(())
    }

    fn agent(&mut self) -> Result<&mut agent_dp::Datapath> {
        self.dp.as_mut().context("datapath not loaded")
    }

    /// The loaded object.
    pub fn ebpf(&mut self) -> Result<&mut Ebpf> {
        Ok(self.agent()?.ebpf_mut())
    }

    /// Apply the agent's map operations (e.g. what its flow table made of
    /// FLOW_MODs), in order.
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<()> {
        self.agent()?.apply(ops)
    }

    /// Install `flows` (ovs-ofctl syntax) through a fresh flow table of the
    /// agent, which compiles each FLOW_MOD into map operations as the agent
    /// does; a flow it refuses is an error.
    pub fn install_flows(&mut self, flows: &[&str]) -> Result<()> {
        let mut t = daolinet_agent::oftable::FlowTable::default();
        for f in flows {
            let fm: daolinet_openflow::FlowMod = f.parse().with_context(|| format!("{f:?}"))?;
            let o = t
                .flow_mod(&fm, 0, &mut NoCounters)
                .map_err(|e| anyhow::anyhow!("{f:?} refused: {e:?}"))?;
            self.apply(&o.ops)?;
        }
        Ok(())
    }

    /// Register a port in DL_PORTS (by ifindex) and DL_OFPORTS (by ofport).
    pub fn add_port(&mut self, port: PortInfo) -> Result<()> {
        self.agent()?.write_port(&port)
    }

    /// Replace the subtable list (must be sorted by descending max priority)
    /// and set `DatapathConfig::n_subtables`.
    pub fn set_subtables(&mut self, subs: &[Subtable]) -> Result<()> {
        let list = subs
            .iter()
            .map(|s| (*s, daolinet_common::FlowKeyExt::default()))
            .collect();
        self.agent()?.apply(&[MapOp::SetSubtables(0, list)])
    }

    /// Install a rule matching `key` under subtable `sub` (the key is masked
    /// with the subtable's mask here).
    pub fn insert_flow(&mut self, sub: &Subtable, key: &FlowKey, entry: FlowEntry) -> Result<()> {
        let mk = FlowMapKey {
            subtable: sub.id,
            key: key.masked(&sub.mask),
        };
        self.agent()?
            .apply(&[MapOp::PutFlow(mk.into(), Box::new(entry))])
    }

    /// Remove the rule matching `key` under subtable `sub`.
    pub fn remove_flow(&mut self, sub: &Subtable, key: &FlowKey) -> Result<()> {
        let mk = FlowMapKey {
            subtable: sub.id,
            key: key.masked(&sub.mask),
        };
        self.agent()?.apply(&[MapOp::DelFlow(mk.into())])
    }

    /// Drop counters summed over CPUs, indexed by [`DropReason`].
    pub fn drops(&mut self) -> Result<Vec<u64>> {
        Ok(self.agent()?.drops()?.into_iter().map(|(_, n)| n).collect())
    }

    /// One drop counter summed over CPUs.
    pub fn drop_count(&mut self, reason: DropReason) -> Result<u64> {
        Ok(self.drops()?[reason as usize])
    }

    /// Statistics of `rule_id`, merged over CPUs.
    pub fn rule_stats(&mut self, rule_id: u32) -> Result<RuleStats> {
        Ok(self.agent()?.find_rule_stats(rule_id)?.unwrap_or_default())
    }

    /// Statistics of port `slot`, merged over CPUs.
    pub fn port_stats(&mut self, slot: u32) -> Result<PortStats> {
        self.agent()?.port_stats(slot)
    }

    /// A meter's counters (by stats slot), summed over CPUs.
    pub fn meter_stats(&mut self, slot: u32) -> Result<daolinet_common::MeterStats> {
        self.agent()?.meter_stats(slot)
    }

    /// Drain the punt ring buffer; a malformed record is an error.
    pub fn punts(&mut self) -> Result<Vec<Punt>> {
        self.agent()?.punts()?.into_iter().collect()
    }

    fn prog_fd(&mut self, name: &str) -> Result<RawFd> {
        let prog = self
            .ebpf()?
            .program(name)
            .with_context(|| format!("program {name} missing"))?;
        Ok(prog.fd()?.as_fd().as_raw_fd())
    }

    /// Run the TC program on `packet` arriving on `ifindex` (1 = `lo`, or a
    /// real device of this namespace). Returns (verdict, packet after).
    pub fn run_tc(&mut self, packet: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
        let fd = self.prog_fd(names::PROG_TC)?;
        prog_test_run(fd, packet, Some(&skb_ctx(ifindex)))
    }

    /// Run the TC program `repeat` times on `packet` (not restored between
    /// runs) arriving on `ifindex`; returns (last verdict, mean ns per run).
    pub fn time_tc(&mut self, packet: &[u8], ifindex: u32, repeat: u32) -> Result<(u32, u32)> {
        let fd = self.prog_fd(names::PROG_TC)?;
        let (ret, _, ns) = prog_test_run_repeat(fd, packet, Some(&skb_ctx(ifindex)), repeat)?;
        Ok((ret, ns))
    }

    /// Run the XDP program on `packet` arriving on `ifindex` (a real device
    /// of this namespace; `lo` = 1 works). Returns (verdict, packet after).
    pub fn run_xdp(&mut self, packet: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
        let fd = self.prog_fd(names::PROG_XDP)?;
        prog_test_run(fd, packet, Some(&xdp_ctx(packet.len(), ifindex)))
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // Close programs and maps before the bpffs goes.
        drop(self.dp.take());
    }
}

/// Create a BPF hash map with these key and value sizes and pin it at
/// `path` (replacing what is there): a map as another agent version could
/// have left it.
pub fn pin_hash_map(path: &Path, key_size: u32, value_size: u32) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    /// The `map_create` member of `union bpf_attr`.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    /// The `obj_pin` member of `union bpf_attr`.
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_HASH,
        key_size,
        value_size,
        max_entries: 16,
        map_flags: 0,
    };
    // SAFETY: a valid attribute of the size given; the kernel reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            size_of::<MapCreate>() as libc::c_uint,
        )
    };
    anyhow::ensure!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor the kernel just gave us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) };
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let pin = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: a valid attribute pointing at a NUL-terminated path that
    // outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            size_of::<ObjPin>() as libc::c_uint,
        )
    };
    anyhow::ensure!(rc == 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    Ok(())
}
