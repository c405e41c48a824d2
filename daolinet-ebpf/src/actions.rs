//! Applying a rule's actions to the packet.
//!
//! Actions run in order. The *last* output-like action (output, in_port,
//! local, controller) decides the verdict; earlier outputs send copies
//! (`bpf_clone_redirect` in TC; skipped in XDP, which cannot clone). Earlier
//! `OutputLocal` actions are ignored (the original can only take one way),
//! an earlier `Controller` punts a copy. Actions after the last output have
//! no effect; a rule without any output drops ([`DropReason::PolicyDrop`]).
//! A set action on a packet without that header is skipped.

use daolinet_common::{
    Action, ActionKind, DropReason, FlowEntry, PortInfo, PuntReason, MAX_ACTIONS,
};

use crate::{
    context::{Packet, Sent, Target},
    counters,
    maps::DL_OFPORTS,
    parse::{
        Parsed, ETH_DST_OFF, ETH_SRC_OFF, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, IP_TTL_OFF, L3,
    },
    punt::punt,
};

/// The per-packet state the actions work on. Scalars only: it is handed
/// to the per-action global BPF function as plain memory.
#[repr(C)]
pub struct ActState {
    /// The packet as parsed (kept up to date by set actions).
    pub pkt: Parsed,
    /// The ingress port.
    pub port: PortInfo,
}

/// Return value of [`step`]: go on with the next action.
pub const ACT_CONTINUE: i32 = -1;
/// Return values of [`step`] at or below this encode a drop:
/// `ACT_DROP_BASE - reason`.
pub const ACT_DROP_BASE: i32 = -100;

/// Apply `entry`'s actions; returns the program verdict, or the reason to
/// drop the packet.
///
/// Each action runs in [`step`], which the program entry points wrap in a
/// *global* BPF function ([`Packet::step_out_of_line`]) that the verifier
/// checks once, on its own. Inlined, the action loop multiplies the
/// verifier's paths by every parse variant and every action kind of every
/// iteration and does not fit the 1M-instruction budget.
#[inline(always)]
pub fn apply<P: Packet>(ctx: &P, st: &mut ActState, entry: &FlowEntry) -> Result<i32, DropReason> {
    let n = entry.n_actions;
    if n == 0 {
        return Err(DropReason::PolicyDrop);
    }
    let mut i = 0u32;
    while i < MAX_ACTIONS as u32 && i < n {
        let ret = ctx.step_out_of_line(st, entry, i);
        if ret >= 0 {
            return Ok(ret);
        }
        if ret <= ACT_DROP_BASE {
            return Err(drop_reason(ACT_DROP_BASE - ret));
        }
        i += 1;
    }
    // No output: OpenFlow drops.
    Err(DropReason::PolicyDrop)
}

/// Decode a drop reason from a step result.
#[inline(always)]
fn drop_reason(v: i32) -> DropReason {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        if DropReason::ALL[i] as i32 == v {
            return DropReason::ALL[i];
        }
        i += 1;
    }
    DropReason::RewriteFailed
}

/// Apply action `index` of `entry` to the packet in `ctx`: a verdict
/// (>= 0) ends the action list, [`ACT_CONTINUE`] goes on,
/// `ACT_DROP_BASE - reason` drops.
#[inline(always)]
pub fn step<P: Packet>(ctx: &P, st: &mut ActState, entry: &FlowEntry, index: u32) -> i32 {
    let n = entry.n_actions as usize;
    let index = index as usize;
    let Some(a) = entry.actions.get(index) else {
        return ACT_DROP_BASE - DropReason::PolicyDrop as i32;
    };
    let a = *a;
    // The last output-like action decides the verdict; earlier ones copy.
    // (Constant trip count and constant offsets: the verifier cannot relate
    // a pointer walking from `index` to its loop counter.)
    let mut last = true;
    let mut j = 0;
    while j < MAX_ACTIONS {
        if j > index && j < n && matches!(entry.actions[j].kind(), Some(k) if k.is_output()) {
            last = false;
        }
        j += 1;
    }
    let rule_id = entry.rule_id;
    match apply_one(ctx, &st.port, &mut st.pkt, rule_id, &a, last) {
        Ok(Some(v)) => v,
        Ok(None) => ACT_CONTINUE,
        Err(r) => ACT_DROP_BASE - r as i32,
    }
}

/// Apply one action; `Some(verdict)` ends the action list.
#[inline(always)]
fn apply_one<P: Packet>(
    ctx: &P,
    port: &PortInfo,
    pkt: &mut Parsed,
    rule_id: u32,
    a: &Action,
    last: bool,
) -> Result<Option<i32>, DropReason> {
    let Some(kind) = a.kind() else {
        // Unknown kind (newer agent?): ignore it.
        return Ok(None);
    };
    match kind {
        ActionKind::Output => {
            // SAFETY: map value, valid for this run.
            let Some(dst) = (unsafe { DL_OFPORTS.get(a.arg) }) else {
                return Err(DropReason::NoSuchPort);
            };
            output(ctx, Target::for_port(dst), dst.slot, last)
        }
        ActionKind::OutputInPort => output(ctx, Target::InPort(ctx.ifindex()), port.slot, last),
        ActionKind::OutputLocal => Ok(if last { Some(P::PASS) } else { None }),
        ActionKind::Controller => {
            // The agent trims to max_len (`arg`) when it builds PACKET_IN.
            punt(ctx, port, PuntReason::Action, rule_id)?;
            Ok(if last { Some(P::DROP) } else { None })
        }
        ActionKind::Drop => Err(DropReason::PolicyDrop),
        ActionKind::SetEthSrc => {
            ctx.store(ETH_SRC_OFF, &a.mac())
                .map_err(|_| DropReason::RewriteFailed)?;
            pkt.key.eth_src = a.mac();
            Ok(None)
        }
        ActionKind::SetEthDst => {
            ctx.store(ETH_DST_OFF, &a.mac())
                .map_err(|_| DropReason::RewriteFailed)?;
            pkt.key.eth_dst = a.mac();
            Ok(None)
        }
        ActionKind::SetIpv4Src => set_ipv4(ctx, pkt, true, a.ipv4()).map(|_| None),
        ActionKind::SetIpv4Dst => set_ipv4(ctx, pkt, false, a.ipv4()).map(|_| None),
        ActionKind::SetL4Src => set_port(ctx, pkt, true, a.arg as u16).map(|_| None),
        ActionKind::SetL4Dst => set_port(ctx, pkt, false, a.arg as u16).map(|_| None),
        ActionKind::DecTtl => dec_ttl(ctx, port, pkt, rule_id),
    }
}

/// Output to `target` and count it on port `slot`.
#[inline(always)]
fn output<P: Packet>(
    ctx: &P,
    target: Target,
    slot: u32,
    last: bool,
) -> Result<Option<i32>, DropReason> {
    let len = ctx.len();
    match ctx.output(target, last)? {
        Sent::Final(v) => {
            counters::count_tx(slot, len);
            Ok(Some(v))
        }
        Sent::Copy => {
            counters::count_tx(slot, len);
            Ok(None)
        }
        Sent::Skipped => Ok(None),
    }
}

/// Rewrite the IPv4 source (`src`) or destination address, fixing the IP
/// header checksum and the TCP/UDP checksum (pseudo-header).
#[inline(always)]
fn set_ipv4<P: Packet>(
    ctx: &P,
    pkt: &mut Parsed,
    src: bool,
    new: [u8; 4],
) -> Result<(), DropReason> {
    if pkt.l3 != L3::Ipv4 {
        return Ok(());
    }
    let (old, off) = if src {
        (pkt.key.ipv4_src, IP_SRC_OFF)
    } else {
        (pkt.key.ipv4_dst, IP_DST_OFF)
    };
    if old == new {
        return Ok(());
    }
    let from = u32::from_ne_bytes(old);
    let to = u32::from_ne_bytes(new);
    if pkt.has_ports() {
        ctx.l4_csum_replace(pkt.l4_csum_off(), from, to, 4, true, pkt.is_udp())
            .map_err(|_| DropReason::RewriteFailed)?;
    }
    ctx.l3_csum_replace(pkt.l3_off + IP_CSUM_OFF, from, to, 4)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(pkt.l3_off + off, &new)
        .map_err(|_| DropReason::RewriteFailed)?;
    if src {
        pkt.key.ipv4_src = new;
    } else {
        pkt.key.ipv4_dst = new;
    }
    Ok(())
}

/// Rewrite the TCP/UDP source (`src`) or destination port, fixing the L4
/// checksum. Other protocols (and later fragments) are left alone.
#[inline(always)]
fn set_port<P: Packet>(ctx: &P, pkt: &mut Parsed, src: bool, new: u16) -> Result<(), DropReason> {
    if !pkt.has_ports() {
        return Ok(());
    }
    let (old, off) = if src {
        (pkt.key.l4_src, 0)
    } else {
        (pkt.key.l4_dst, 2)
    };
    if old == new {
        return Ok(());
    }
    let from = u16::from_ne_bytes(old.to_be_bytes()) as u32;
    let to = u16::from_ne_bytes(new.to_be_bytes()) as u32;
    ctx.l4_csum_replace(pkt.l4_csum_off(), from, to, 2, false, pkt.is_udp())
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(pkt.l4_off + off, &new.to_be_bytes())
        .map_err(|_| DropReason::RewriteFailed)?;
    if src {
        pkt.key.l4_src = new;
    } else {
        pkt.key.l4_dst = new;
    }
    Ok(())
}

/// Decrement the IPv4 TTL; a TTL of 0 or 1 punts the packet
/// ([`PuntReason::InvalidTtl`]) and ends the action list.
#[inline(always)]
fn dec_ttl<P: Packet>(
    ctx: &P,
    port: &PortInfo,
    pkt: &mut Parsed,
    rule_id: u32,
) -> Result<Option<i32>, DropReason> {
    if pkt.l3 != L3::Ipv4 {
        return Ok(None);
    }
    let ttl = pkt.ttl;
    if ttl <= 1 {
        return match punt(ctx, port, PuntReason::InvalidTtl, rule_id) {
            Ok(()) => Ok(Some(P::DROP)),
            Err(_) => Err(DropReason::TtlExceeded),
        };
    }
    let new = ttl - 1;
    // TTL shares a 16-bit checksum word with the protocol.
    let proto = pkt.key.ip_proto;
    let from = u16::from_ne_bytes([ttl, proto]) as u32;
    let to = u16::from_ne_bytes([new, proto]) as u32;
    ctx.l3_csum_replace(pkt.l3_off + IP_CSUM_OFF, from, to, 2)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(pkt.l3_off + IP_TTL_OFF, &[new])
        .map_err(|_| DropReason::RewriteFailed)?;
    pkt.ttl = new;
    Ok(None)
}
