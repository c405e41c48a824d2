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
mod ceiling;
mod classify;
mod context;
mod counters;
mod datapath;
mod maps;
mod parse;
mod pipeline;
mod punt;
mod rewrite;
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
    use daolinet_common::{Action, DropReason, FlowEntry, FlowKey, RuleExt};

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
        a: *const Action,
        last: u32,
    ) -> i32 {
        // SAFETY: the verifier hands global functions possibly-NULL memory
        // of the declared sizes.
        let (Some(st), Some(a)) = (unsafe { (st.as_mut(), a.as_ref()) }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        step::<_, false>(&TcContext::new(skb), st, a, last != 0)
    }

    /// One action of the XDP program (see [`dl_action_tc`]).
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_action_xdp(
        ctx: *mut xdp_md,
        st: *mut ActState,
        a: *const Action,
        last: u32,
    ) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(a)) = (unsafe { (st.as_mut(), a.as_ref()) }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        step::<_, false>(&XdpContext::new(ctx), st, a, last != 0)
    }

    /// The TC pipeline program, tail-called by [`daolinet_tc`] for rules
    /// beyond one table of apply-actions ([`crate::datapath::run_pipeline`]).
    #[classifier]
    pub fn daolinet_tc_pipeline(ctx: TcContext) -> i32 {
        datapath::run_pipeline(&ctx)
    }

    /// The XDP pipeline program, tail-called by [`daolinet_xdp`].
    #[xdp]
    pub fn daolinet_xdp_pipeline(ctx: XdpContext) -> u32 {
        datapath::run_pipeline(&ctx) as u32
    }

    /// One action of the TC pipeline program: [`dl_action_tc`] with the
    /// actions of [`crate::rewrite`] too.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_paction_tc(
        skb: *mut __sk_buff,
        st: *mut ActState,
        a: *const Action,
        last: u32,
    ) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(a)) = (unsafe { (st.as_mut(), a.as_ref()) }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        step::<_, true>(&TcContext::new(skb), st, a, last != 0)
    }

    /// One action of the XDP pipeline program.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_paction_xdp(
        ctx: *mut xdp_md,
        st: *mut ActState,
        a: *const Action,
        last: u32,
    ) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(a)) = (unsafe { (st.as_mut(), a.as_ref()) }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        step::<_, true>(&XdpContext::new(ctx), st, a, last != 0)
    }

    /// One rule's instructions in the TC pipeline ([`crate::pipeline::rule`]).
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_rule_tc(
        skb: *mut __sk_buff,
        st: *mut ActState,
        entry: *const FlowEntry,
    ) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(entry)) = (unsafe { (st.as_mut(), entry.as_ref()) }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        crate::pipeline::rule(&TcContext::new(skb), st, entry)
    }

    /// One rule's instructions in the XDP pipeline.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_rule_xdp(
        ctx: *mut xdp_md,
        st: *mut ActState,
        entry: *const FlowEntry,
    ) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(entry)) = (unsafe { (st.as_mut(), entry.as_ref()) }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        crate::pipeline::rule(&XdpContext::new(ctx), st, entry)
    }

    /// The action set at the end of the TC pipeline.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_aset_tc(skb: *mut __sk_buff, st: *mut ActState) -> i32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        crate::pipeline::action_set(&TcContext::new(skb), st)
    }

    /// The action set at the end of the XDP pipeline.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_aset_xdp(ctx: *mut xdp_md, st: *mut ActState) -> i32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        crate::pipeline::action_set(&XdpContext::new(ctx), st)
    }

    /// Merge a rule's write-actions into the action set
    /// ([`crate::pipeline::write_set`]): 0, or 1 when it is full.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_write_set(st: *mut ActState, e: *const RuleExt) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(e)) = (unsafe { (st.as_mut(), e.as_ref()) }) else {
            return 1;
        };
        crate::pipeline::write_set(st, e)
    }

    /// The actions of [`crate::rewrite::apply`] for the TC pipeline: 0, or a
    /// [`DropReason`] + 1.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_rewrite_tc(
        skb: *mut __sk_buff,
        st: *mut ActState,
        a: *const Action,
    ) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(a)) = (unsafe { (st.as_mut(), a.as_ref()) }) else {
            return DropReason::RewriteFailed as i32 + 1;
        };
        crate::rewrite::unit(crate::rewrite::apply(&TcContext::new(skb), st, a))
    }

    /// [`dl_rewrite_tc`] for the XDP pipeline.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_rewrite_xdp(ctx: *mut xdp_md, st: *mut ActState, a: *const Action) -> i32 {
        // SAFETY: as above.
        let (Some(st), Some(a)) = (unsafe { (st.as_mut(), a.as_ref()) }) else {
            return DropReason::RewriteFailed as i32 + 1;
        };
        crate::rewrite::unit(crate::rewrite::apply(&XdpContext::new(ctx), st, a))
    }

    /// The pending lazy rewrites ([`crate::actions::commit`]) before a
    /// rarer action, TC: 0, or a [`DropReason`] + 1.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_commit_tc(skb: *mut __sk_buff, st: *mut ActState) -> i32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return DropReason::RewriteFailed as i32 + 1;
        };
        crate::rewrite::unit(crate::actions::commit(&TcContext::new(skb), st))
    }

    /// [`dl_commit_tc`] for XDP.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_commit_xdp(ctx: *mut xdp_md, st: *mut ActState) -> i32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return DropReason::RewriteFailed as i32 + 1;
        };
        crate::rewrite::unit(crate::actions::commit(&XdpContext::new(ctx), st))
    }

    /// Parse again after a push or pop ([`crate::rewrite::reparse`]), TC.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_reparse_tc(skb: *mut __sk_buff, st: *mut ActState) -> i32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return DropReason::RewriteFailed as i32 + 1;
        };
        crate::rewrite::unit(crate::rewrite::reparse(&TcContext::new(skb), st))
    }

    /// [`dl_reparse_tc`] for XDP.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_reparse_xdp(ctx: *mut xdp_md, st: *mut ActState) -> i32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return DropReason::RewriteFailed as i32 + 1;
        };
        crate::rewrite::unit(crate::rewrite::reparse(&XdpContext::new(ctx), st))
    }

    /// One step of a pop's byte shift ([`crate::context::Packet::shift_back4`]),
    /// TC: verified once, not once per step. 0 or 1.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_shift_tc(skb: *mut __sk_buff, off: u32, n: u32) -> i32 {
        i32::from(crate::context::Packet::shift_back4(&TcContext::new(skb), off, n).is_err())
    }

    /// [`dl_shift_tc`] for XDP.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_shift_xdp(ctx: *mut xdp_md, off: u32, n: u32) -> i32 {
        i32::from(crate::context::Packet::shift_back4(&XdpContext::new(ctx), off, n).is_err())
    }

    /// The CRC32c change of an SCTP packet whose first 4 bytes changed by
    /// `d` ([`crate::rewrite::crc_of_delta`]).
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_crc_delta(d: u32, zeros: u32) -> u32 {
        crate::rewrite::crc_of_delta(d, zeros)
    }

    /// A group ([`crate::pipeline::group`]) for the TC program.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_group_tc(
        skb: *mut __sk_buff,
        st: *mut ActState,
        id: u32,
        last: u32,
    ) -> i32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        crate::pipeline::group(&TcContext::new(skb), st, id, last != 0)
    }

    /// A group for the XDP program.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_group_xdp(ctx: *mut xdp_md, st: *mut ActState, id: u32, last: u32) -> i32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return ACT_DROP_BASE - DropReason::RewriteFailed as i32;
        };
        crate::pipeline::group(&XdpContext::new(ctx), st, id, last != 0)
    }

    /// The walk of any table ([`crate::classify::search_table`]): 1 + the
    /// winner's subtable position, 0 on a miss.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_search(st: *mut ActState, table: u32) -> u32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return 0;
        };
        crate::classify::search_table(st, table)
    }

    /// The winner's map key ([`crate::classify::prepare_key`]).
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_prepare(st: *mut ActState, slot: u32) -> u32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return 0;
        };
        crate::classify::prepare_key(st, slot)
    }

    /// One subtable of a walk ([`crate::classify::probe`]): the matching
    /// rule's priority + 1, or 0.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_probe(st: *mut ActState, slot: u32) -> u32 {
        // SAFETY: as above.
        let Some(st) = (unsafe { st.as_mut() }) else {
            return 0;
        };
        crate::classify::probe(st, slot)
    }

    /// Fill the packet's wide fields ([`crate::parse::fill_ext`]), TC.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_fill_ext_tc(skb: *mut __sk_buff, p: *mut Parsed) -> i32 {
        // SAFETY: as above.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return DropReason::Malformed as i32 + 1;
        };
        crate::parse::fill_ext(&TcContext::new(skb), p)
    }

    /// Fill the packet's wide fields, XDP.
    #[no_mangle]
    #[inline(never)]
    pub extern "C" fn dl_fill_ext_xdp(ctx: *mut xdp_md, p: *mut Parsed) -> i32 {
        // SAFETY: as above.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return DropReason::Malformed as i32 + 1;
        };
        crate::parse::fill_ext(&XdpContext::new(ctx), p)
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
