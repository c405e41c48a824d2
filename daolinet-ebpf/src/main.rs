//! DaoliNet eBPF datapath: an OpenFlow-style switch in BPF.
//!
//! Two programs share one generic pipeline ([`datapath::run`]) through the
//! [`context::Packet`] abstraction:
//! - `daolinet_tc` (`#[classifier]`, attached with tcx on container veths
//!   and on a TC uplink);
//! - `daolinet_xdp` (`#[xdp]`, on the uplink with `--uplink-mode xdp`).
//!
//! Map layouts and semantics are defined in `daolinet-common`.
#![no_std]
// Atomic adds on the rules' counters: the BPF target has no atomic RMW
// methods on the stable types (the BPF build uses nightly; a host build,
// e.g. clippy, uses the stable types instead).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![no_main]

mod actions;
mod classify;
mod context;
mod counters;
mod datapath;
mod maps;
mod parse;
mod punt;
mod samples;

/// The program entry points (their names are the program names).
// The attribute macros wrap each function in an undocumented `extern "C"` one.
#[allow(missing_docs)]
pub(crate) mod programs {
    use aya_ebpf::{
        bindings::{__sk_buff, xdp_md},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };

    use crate::classify::EmcEntry;
    use crate::{
        actions::{step, ActState, ACT_DROP_BASE},
        datapath,
        parse::Parsed,
    };
    use daolinet_common::{DropReason, FlowEntry, FlowKey};

    /// TC (tcx ingress) entry point.
    #[classifier]
    pub fn daolinet_tc(ctx: TcContext) -> i32 {
        datapath::run(&ctx)
    }

    /// XDP entry point.
    #[xdp]
    pub fn daolinet_xdp(ctx: XdpContext) -> u32 {
        datapath::run(&ctx) as u32
    }

    /// The classifier search ([`crate::classify::search`]) as a global BPF
    /// function, shared by both programs and verified once.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_classify(key: *const FlowKey, scratch: *mut EmcEntry) -> i32 {
        // SAFETY: the verifier hands global functions possibly-NULL memory
        // of the declared sizes.
        let (Some(key), Some(scratch)) = (unsafe { (key.as_ref(), scratch.as_mut()) }) else {
            return 0;
        };
        crate::classify::search(key, scratch)
    }

    /// One action of the TC program, as a global BPF function: the verifier
    /// checks it once on its own instead of once per path of the caller.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_action_tc(
        skb: *mut __sk_buff,
        st: *mut ActState,
        entry: *const FlowEntry,
        index: u32,
    ) -> i32 {
        // SAFETY: the verifier hands global functions possibly-NULL memory
        // of the declared sizes.
        let (Some(st), Some(entry)) = (unsafe { (st.as_mut(), entry.as_ref()) }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        step(&TcContext::new(skb), st, entry, index)
    }

    /// The rarer part of parsing ([`crate::parse::parse_more`]: a second
    /// VLAN tag, IPv6, MPLS) for the TC program, as a global BPF function:
    /// it keeps the IPv4 fast path of the program short. 0, or the
    /// [`DropReason`] + 1.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_parse_tc(skb: *mut __sk_buff, p: *mut Parsed) -> i32 {
        // SAFETY: as above.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return DropReason::Malformed as i32 + 1;
        };
        crate::parse::parse_more(&TcContext::new(skb), p)
    }

    /// [`dl_parse_tc`] for the XDP program.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_parse_xdp(ctx: *mut xdp_md, p: *mut Parsed) -> i32 {
        // SAFETY: as above.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return DropReason::Malformed as i32 + 1;
        };
        crate::parse::parse_more(&XdpContext::new(ctx), p)
    }

    /// One action of the XDP program (see [`dl_action_tc`]).
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_action_xdp(
        ctx: *mut xdp_md,
        st: *mut ActState,
        entry: *const FlowEntry,
        index: u32,
    ) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(entry)) = (unsafe { (st.as_mut(), entry.as_ref()) }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        step(&XdpContext::new(ctx), st, entry, index)
    }
}

// Only for the BPF target: a host check (`cargo clippy --workspace
// --all-targets`) links std through dependencies, which brings its own.
#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in a verified program: a reachable panic is an endless
    // loop, which the verifier rejects at load time.
    loop {}
}
