//! The per-packet pipeline shared by the TC and XDP programs.
//!
//! 1. ingress port lookup ([`port_by_ifindex`]; unknown interfaces pass
//!    untouched and are counted as [`DropReason::UnknownIngress`]);
//! 2. parse ([`crate::parse`]); 3. anti-spoofing; 4. classify
//!    ([`crate::classify`]); 5. miss policy or 6. actions
//!    ([`crate::actions`]). Every drop is counted by reason and on the
//!    ingress port, and some are sampled for the agent ([`crate::samples`]).

use daolinet_common::{
    DropReason, MissPolicy, PortInfo, PuntReason, NO_RULE, PORT_FLAG_ANTI_SPOOF,
};

use crate::{
    actions::apply,
    classify::{classify, Found},
    context::Packet,
    counters,
    maps::{port_by_ifindex, DL_FIRST, DL_SCRATCH},
    parse::{parse, Parsed, L3},
    pipeline::{decode, lookup_table0},
    punt::punt,
    samples,
};

/// Run the datapath on one packet; returns the program verdict.
#[inline(always)]
pub fn run<P: Packet>(ctx: &P) -> i32 {
    let ifindex = ctx.ifindex();
    let Some(port) = port_by_ifindex(ifindex) else {
        // Not ours: do not break interfaces we do not manage.
        counters::count_reason(DropReason::UnknownIngress);
        return P::PASS;
    };
    let len = ctx.len();
    counters::count_rx(port.slot, len);
    match process(ctx, port, len) {
        Ok(verdict) => verdict,
        Err(reason) => {
            counters::count_drop(reason, port.slot);
            samples::sample(ctx, port, reason, len);
            P::DROP
        }
    }
}

#[inline(always)]
fn process<P: Packet>(ctx: &P, port: &PortInfo, len: u32) -> Result<i32, DropReason> {
    // The per-packet state lives in a per-CPU map, not on the small stack.
    let Some(st) = DL_SCRATCH.get_ptr_mut(0) else {
        return Err(DropReason::RewriteFailed);
    };
    // SAFETY: per-CPU map value of the right type, exclusive to this run
    // (a program run is not preempted on its CPU); every field the
    // pipeline reads is written first (parse, then ActState::reset).
    let st = unsafe { &mut *st };
    parse(ctx, port.ofport, &mut st.pkt)?;
    let pkt = &st.pkt;
    if port.flags & PORT_FLAG_ANTI_SPOOF != 0 && spoofed(port, pkt) {
        return Err(DropReason::Spoofed);
    }
    let entry = match classify(&st.pkt.key, &mut st.emc) {
        Found::Hit(e) => Some(e),
        Found::Miss => None,
        // Table 0 has wide subtables: the pipeline program looks it up
        // (the general lookup, and its rule from another map, stay out of
        // this program).
        Found::Wide => {
            st.reset(port);
            st.pipe_lookup = 1;
            ctx.tail_call_pipeline();
            // Only when the pipeline program is missing.
            return Err(DropReason::Unsupported);
        }
    };
    let Some(entry) = entry else {
        return miss(ctx, port);
    };
    counters::count_rule(entry, len);
    st.reset(port);
    // SAFETY: map value, valid (RCU) for the rest of this run.
    let entry = unsafe { &*entry };
    if entry.kind != 0 {
        // More than one table of apply-actions: the pipeline program.
        let Some(first) = DL_FIRST.get_ptr_mut(0) else {
            return Err(DropReason::Unsupported);
        };
        // SAFETY: per-CPU map value, exclusive during this run.
        unsafe { *first = *entry };
        st.pipe_lookup = 0;
        ctx.tail_call_pipeline();
        // Only when the pipeline program is missing.
        return Err(DropReason::Unsupported);
    }
    apply(ctx, st, entry)
}

/// No rule of table 0 for the packet: the ingress port's miss policy.
#[inline(always)]
fn miss<P: Packet>(ctx: &P, port: &PortInfo) -> Result<i32, DropReason> {
    match MissPolicy::from_u32(port.miss) {
        MissPolicy::Punt => {
            punt(ctx, port, PuntReason::Miss, NO_RULE, 0, 0)?;
            // The agent re-injects it (PACKET_OUT) once the controller decided.
            Ok(P::DROP)
        }
        MissPolicy::Local => Ok(P::PASS),
        MissPolicy::Drop => Err(DropReason::MissDrop),
    }
}

/// The pipeline program's run: `st` and [`DL_FIRST`] as the main program
/// left them (same CPU, same packet): the first rule is in [`DL_FIRST`],
/// or, with `st.pipe_lookup`, table 0 is to be looked up here. The
/// verdict; drops counted like the main program's.
#[inline(always)]
pub fn run_pipeline<P: Packet>(ctx: &P) -> i32 {
    let (Some(st), Some(first)) = (DL_SCRATCH.get_ptr_mut(0), DL_FIRST.get_ptr(0)) else {
        counters::count_reason(DropReason::Unsupported);
        return P::DROP;
    };
    // SAFETY: per-CPU map values, exclusive during this run (see process).
    let (st, first) = unsafe { (&mut *st, &*first) };
    let slot = st.port.slot;
    let r = if st.pipe_lookup != 0 {
        st.pipe_lookup = 0;
        match lookup_table0(ctx, st) {
            Some(entry) => {
                counters::count_rule(entry, ctx.len());
                // SAFETY: map value, valid (RCU) for the rest of this run.
                decode(crate::pipeline::run(ctx, st, unsafe { &*entry }))
            }
            None => {
                let port = st.port;
                miss(ctx, &port).map(Some)
            }
        }
    } else {
        decode(crate::pipeline::run(ctx, st, first))
    };
    match r {
        Ok(Some(v)) => v,
        Ok(None) => {
            counters::count_drop(DropReason::PolicyDrop, slot);
            P::DROP
        }
        Err(reason) => {
            counters::count_drop(reason, slot);
            P::DROP
        }
    }
}

/// True when the packet's source is not the one registered for `port`:
/// Ethernet source always, IPv4 source for IPv4, sender address for ARP.
#[inline(always)]
fn spoofed(port: &PortInfo, pkt: &Parsed) -> bool {
    if pkt.key.eth_src != port.allowed_mac {
        return true;
    }
    match pkt.l3 {
        L3::Ipv4 | L3::Arp => pkt.key.ipv4_src != port.allowed_ipv4,
        L3::Other | L3::Ipv6 | L3::Mpls => false,
    }
}
