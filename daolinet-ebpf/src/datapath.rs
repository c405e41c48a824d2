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
    classify::classify,
    context::Packet,
    counters,
    maps::{port_by_ifindex, DL_SCRATCH},
    parse::{parse, Parsed, L3},
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
    let Some(entry) = classify(&st.pkt.key, &mut st.emc) else {
        return match MissPolicy::from_u32(port.miss) {
            MissPolicy::Punt => {
                punt(ctx, port, PuntReason::Miss, NO_RULE)?;
                // The agent re-injects it (PACKET_OUT) once the controller decided.
                Ok(P::DROP)
            }
            MissPolicy::Local => Ok(P::PASS),
            MissPolicy::Drop => Err(DropReason::MissDrop),
        };
    };
    counters::count_rule(entry, len);
    st.reset(port);
    // SAFETY: map value, valid (RCU) for the rest of this run.
    apply(ctx, st, unsafe { &*entry })
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
