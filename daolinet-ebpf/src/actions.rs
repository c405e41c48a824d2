//! Applying a rule's actions to the packet.
//!
//! Actions run in order. The *last* output-like action (output, in_port,
//! local, controller) decides the verdict; earlier outputs send copies
//! (`bpf_clone_redirect` in TC; skipped in XDP, which cannot clone). Earlier
//! `OutputLocal` actions are ignored (the original can only take one way),
//! an earlier `Controller` punts a copy. Actions after the last output have
//! no effect; a rule without any output drops ([`DropReason::PolicyDrop`]).
//! A set action on a packet without that header is skipped.
//!
//! Set-field and `dec_ttl` actions are *lazy*, as in Open vSwitch: they only
//! change the parsed key ([`ActState::pkt`]) and mark what is dirty; the
//! packet is rewritten once, right before it (or a copy) leaves
//! ([`commit`]): one store for both MACs, one for both IPv4 addresses, one
//! checksum fix-up per checksum with the summed difference of every
//! changed word, instead of a store and two checksum helper calls per field.

use daolinet_common::{
    Action, ActionKind, DropReason, FlowEntry, FlowKey, PortInfo, PuntReason, WideMapKey,
    ASET_SLOTS, MAX_ACTIONS, OFPP_LOCAL,
};

use crate::{
    classify::EmcEntry,
    context::{csum_diff, Buf, Packet, Sent, Target},
    counters,
    maps::port_by_ofport,
    parse::{Parsed, ETH_DST_OFF, IPV6_HOP_OFF, IP_CSUM_OFF, IP_SRC_OFF, IP_TTL_OFF, L3},
    punt::punt,
};

/// [`ActState::dirty`]: a MAC address was set.
pub const DIRTY_ETH: u32 = 1;
/// [`ActState::dirty`]: an IPv4 address was set.
pub const DIRTY_IP: u32 = 2;
/// [`ActState::dirty`]: a TCP/UDP port was set.
pub const DIRTY_L4: u32 = 4;
/// [`ActState::dirty`]: the TTL was decremented.
pub const DIRTY_TTL: u32 = 8;

/// What the packet bytes hold for the fields that enter a checksum, until
/// the next [`commit`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Wire {
    /// IPv4 source and destination, as in the packet (memory byte order).
    pub ipv4: [u32; 2],
    /// TCP/UDP source and destination ports, as in the packet (memory byte
    /// order).
    pub ports: u32,
    /// IPv4 TTL.
    pub ttl: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// The per-packet state the actions work on. Scalars only: it is handed
/// to the per-action global BPF function as plain memory.
#[repr(C)]
pub struct ActState {
    /// The packet as parsed, with the set actions applied so far.
    pub pkt: Parsed,
    /// The ingress port.
    pub port: PortInfo,
    /// The checksummed fields as the packet bytes still hold them.
    pub wire: Wire,
    /// `DIRTY_*` bits: what the set actions changed since the last commit.
    pub dirty: u32,
    /// Index of the last output-like action (the one that decides the
    /// verdict), or [`MAX_ACTIONS`] when there is none.
    pub last_out: u32,
    /// Working memory of the classifier's cache insertion.
    pub emc: EmcEntry,
    /// The table being run (0 on the fast path).
    pub table: u32,
    /// The rule whose actions run (for punts).
    pub rule_id: u32,
    /// The metadata register (low, high); zero on the fast path.
    pub metadata: [u32; 2],
    /// The tunnel id register (low, high); set only by the pipeline.
    pub tunnel_id: [u32; 2],
    /// Outputs done so far (copies, in the pipeline).
    pub sent: u32,
    /// Non-zero once a push or pop changed the packet's layout: the packet
    /// leaves by the port's egress (the peer parses it again) instead of
    /// being handed to the container's stack as is.
    pub restructured: u32,
    /// The action set (write_actions): bit `s` set when `aset[s]` holds
    /// an action (slots: [`daolinet_common::set_slot`]).
    pub aset_bits: u64,
    /// The action set's slots, in execution order.
    pub aset: [Action; ASET_SLOTS],
    /// Working memory of the pipeline's wide lookups.
    pub wide: WideMapKey,
    /// Working memory: the key and dirty bits before a group bucket ran
    /// (an `all` group's next bucket starts from them).
    pub snap_key: FlowKey,
    /// See `snap_key`.
    pub snap_ttl: u8,
    /// Reserved.
    pub _pad: [u8; 3],
    /// Set by the main program before it tail-calls the pipeline program:
    /// 1 when table 0 is to be looked up there (it has wide subtables),
    /// 0 when the first rule is in [`crate::maps::DL_FIRST`].
    pub pipe_lookup: u32,
}

impl ActState {
    /// Prepare the state for the packet just parsed into `self.pkt`.
    #[inline(always)]
    pub fn reset(&mut self, port: &PortInfo) {
        let k = &self.pkt.key;
        // Whole words (key words 1 and 2 are the IPv4 addresses), field by
        // field: a struct literal would copy byte by byte and zero the
        // padding with a call to a byte-wise memset.
        let w = k.words();
        let (sp, dp) = (k.l4_src.to_be_bytes(), k.l4_dst.to_be_bytes());
        let ports = u32::from_ne_bytes([sp[0], sp[1], dp[0], dp[1]]);
        let ttl = self.pkt.ttl;
        let wire = &mut self.wire;
        wire.ipv4 = [w[1], w[2]];
        wire.ports = ports;
        wire.ttl = ttl;
        self.port = *port;
        self.dirty = 0;
        self.last_out = MAX_ACTIONS as u32;
        self.table = 0;
        self.metadata = [0; 2];
    }
}

/// Return value of [`step`]: go on with the next action.
pub const ACT_CONTINUE: i32 = -1;
/// Return values of [`step`] at or below this encode a drop:
/// `ACT_DROP_BASE - reason`.
pub const ACT_DROP_BASE: i32 = -100;

/// Apply `entry`'s actions; returns the program verdict, or the reason to
/// drop the packet.
///
/// Set-field actions and a final output to a port run inline; every other
/// action runs in [`step`], which the program entry points wrap in a
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
    // The last output-like action decides the verdict; earlier ones copy.
    let mut j = 0;
    while j < MAX_ACTIONS {
        if j < n as usize && matches!(entry.actions[j].kind(), Some(k) if k.is_output()) {
            st.last_out = j as u32;
        }
        j += 1;
    }
    if st.last_out as usize >= MAX_ACTIONS {
        // No output: OpenFlow drops.
        return Err(DropReason::PolicyDrop);
    }
    let mut i = 0u32;
    while i < MAX_ACTIONS as u32 && i < n {
        // Set-field actions only touch the state: done here, without the
        // cost of a call into the per-action function.
        if let Some(a) = entry.actions.get(i as usize) {
            if set_field(st, a) {
                i += 1;
                continue;
            }
            // The common last action, an output to a port, also right here:
            // one call of the per-action function fewer per packet.
            if i == st.last_out && a.kind() == Some(ActionKind::Output) {
                let Some(dst) = port_by_ofport(a.arg) else {
                    return Err(DropReason::NoSuchPort);
                };
                commit(ctx, st)?;
                return match output(ctx, Target::for_port(dst, &st.port), dst.slot, true)? {
                    Some(v) => Ok(v),
                    None => Err(DropReason::RedirectFailed),
                };
            }
        }
        let Some(a) = entry.actions.get(i as usize) else {
            break;
        };
        st.rule_id = entry.rule_id;
        let ret = ctx.step_out_of_line(st, a, u32::from(i == st.last_out));
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
pub fn drop_reason(v: i32) -> DropReason {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        if DropReason::ALL[i] as i32 == v {
            return DropReason::ALL[i];
        }
        i += 1;
    }
    DropReason::RewriteFailed
}

/// Apply action `a` (of rule `st.rule_id`) to the packet in `ctx`; `last`:
/// it is the output that decides the verdict. A verdict (>= 0) ends the
/// action list, [`ACT_CONTINUE`] goes on, `ACT_DROP_BASE - reason` drops.
/// `FULL`: the pipeline programs' step, which also runs the actions of
/// [`crate::rewrite`] (userspace gives rules with those the pipeline); the
/// one-table fast path's step does not have them (nor their stack).
#[inline(always)]
pub fn step<P: Packet, const FULL: bool>(
    ctx: &P,
    st: &mut ActState,
    a: &Action,
    last: bool,
) -> i32 {
    let a = *a;
    let rule_id = st.rule_id;
    match apply_one::<P, FULL>(ctx, st, rule_id, &a, last) {
        Ok(Some(v)) => v,
        Ok(None) => ACT_CONTINUE,
        Err(r) => ACT_DROP_BASE - r as i32,
    }
}

/// Apply one action; `Some(verdict)` ends the action list.
#[inline(always)]
fn apply_one<P: Packet, const FULL: bool>(
    ctx: &P,
    st: &mut ActState,
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
            let Some(dst) = port_by_ofport(a.arg) else {
                return Err(DropReason::NoSuchPort);
            };
            commit(ctx, st)?;
            let target = if st.restructured != 0 {
                Target::Egress(dst.ifindex)
            } else {
                Target::for_port(dst, &st.port)
            };
            st.sent += 1;
            output(ctx, target, dst.slot, last)
        }
        ActionKind::OutputInPort => {
            commit(ctx, st)?;
            st.sent += 1;
            output(ctx, Target::InPort(ctx.ifindex()), st.port.slot, last)
        }
        ActionKind::OutputLocal => {
            if !last {
                return Ok(None);
            }
            // From a container: into the host stack through the LOCAL
            // port's device, addressed to it (see `PortKind::Local`). From
            // the uplink (the host's own traffic) or without a LOCAL port:
            // up the stack where the packet came in. From LOCAL itself:
            // OpenFlow drops output to the ingress port.
            if st.port.is_container() {
                if let Some(local) = port_by_ofport(OFPP_LOCAL).filter(|p| p.is_local()) {
                    st.pkt.key.eth_dst = local.allowed_mac;
                    st.dirty |= DIRTY_ETH;
                    commit(ctx, st)?;
                    return output(ctx, Target::Ingress(local.ifindex), local.slot, true);
                }
            } else if st.port.is_local() {
                return Err(DropReason::PolicyDrop);
            }
            commit(ctx, st)?;
            ctx.to_host();
            Ok(Some(P::PASS))
        }
        ActionKind::Controller => {
            commit(ctx, st)?;
            // The agent trims to max_len (`arg`) when it builds PACKET_IN.
            punt_from(ctx, st, PuntReason::Action, rule_id)?;
            st.sent += 1;
            Ok(if last { Some(P::DROP) } else { None })
        }
        ActionKind::Drop => Err(DropReason::PolicyDrop),
        ActionKind::DecTtl => dec_ttl(ctx, st, rule_id),
        ActionKind::DecMplsTtl if FULL => crate::rewrite::dec_mpls_ttl(ctx, st, rule_id),
        ActionKind::SetNwTtl => {
            if st.pkt.is_ip() {
                st.pkt.ttl = a.arg as u8;
                st.dirty |= DIRTY_TTL;
            }
            Ok(None)
        }
        // The tunnel id is a register: no packet bytes change.
        ActionKind::SetTunnelId => {
            let d = a.data();
            st.tunnel_id = [
                u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
                u32::from_le_bytes([d[4], d[5], d[6], d[7]]),
            ];
            Ok(None)
        }
        // Groups run in the pipeline's loops, never here (no recursion).
        ActionKind::Group => Err(DropReason::Unsupported),
        ActionKind::SetEthSrc
        | ActionKind::SetEthDst
        | ActionKind::SetIpv4Src
        | ActionKind::SetIpv4Dst
        | ActionKind::SetL4Src
        | ActionKind::SetL4Dst => {
            if !set_field(st, a) && st.pkt.has_l4 && st.pkt.key.ip_proto == FlowKey::IPPROTO_SCTP {
                // SCTP's CRC32c is fixed where the bytes change.
                if !FULL {
                    return Err(DropReason::Unsupported);
                }
                crate::rewrite::from_unit(ctx.rewrite_out_of_line(st, a))?;
            }
            Ok(None)
        }
        _ if FULL => {
            // Everything else changes the packet at once (and commits
            // the pending rewrites first where the layout changes).
            crate::rewrite::from_unit(ctx.rewrite_out_of_line(st, a))?;
            Ok(None)
        }
        _ => Err(DropReason::Unsupported),
    }
}

/// Apply `a` if it is a set-field action (which only changes the parsed
/// key and the dirty bits); false for every other kind.
#[inline(always)]
fn set_field(st: &mut ActState, a: &Action) -> bool {
    let pkt = &mut st.pkt;
    match a.kind() {
        Some(ActionKind::SetEthSrc) => {
            pkt.key.eth_src = a.mac();
            st.dirty |= DIRTY_ETH;
        }
        Some(ActionKind::SetEthDst) => {
            pkt.key.eth_dst = a.mac();
            st.dirty |= DIRTY_ETH;
        }
        Some(k @ (ActionKind::SetIpv4Src | ActionKind::SetIpv4Dst)) => {
            if pkt.l3 == L3::Ipv4 {
                let w = pkt.key.words_mut();
                // ipv4_src and ipv4_dst are key words 1 and 2.
                let v = u32::from_ne_bytes(a.ipv4());
                if k == ActionKind::SetIpv4Src {
                    w[1] = v;
                } else {
                    w[2] = v;
                }
                st.dirty |= DIRTY_IP;
            }
        }
        Some(k @ (ActionKind::SetL4Src | ActionKind::SetL4Dst)) => {
            // TCP/UDP only: SCTP (CRC32c) is rewritten out of line.
            if !pkt.has_ports() {
                return false;
            }
            if k == ActionKind::SetL4Src {
                pkt.key.l4_src = a.arg as u16;
            } else {
                pkt.key.l4_dst = a.arg as u16;
            }
            st.dirty |= DIRTY_L4;
        }
        _ => return false,
    }
    true
}

/// Write the pending set-field changes into the packet (see the module
/// documentation), fixing the IPv4 header checksum and the TCP/UDP
/// checksum with one helper call each.
#[inline(always)]
pub fn commit<P: Packet>(ctx: &P, st: &mut ActState) -> Result<(), DropReason> {
    let dirty = st.dirty;
    if dirty == 0 {
        return Ok(());
    }
    st.dirty = 0;
    let pkt = &st.pkt;
    let k = &pkt.key;
    if dirty & DIRTY_ETH != 0 {
        // Key words 4..7 hold eth_src then eth_dst (see `parse`); the frame
        // wants eth_dst then eth_src: three shifted words.
        let w = k.words();
        let (w4, w5, w6) = (w[4], w[5], w[6]);
        let mut macs = Buf([0u8; 12]);
        macs.set_u32::<0>((w5 >> 16) | (w6 << 16));
        macs.set_u32::<4>((w6 >> 16) | (w4 << 16));
        macs.set_u32::<8>((w4 >> 16) | (w5 << 16));
        ctx.store(ETH_DST_OFF, &macs.0)
            .map_err(|_| DropReason::RewriteFailed)?;
    }
    if pkt.l3 == L3::Ipv6 {
        return commit_ipv6(ctx, st, dirty);
    }
    if pkt.l3 != L3::Ipv4 {
        return Ok(());
    }
    let mut l3_diff = 0u32;
    if dirty & DIRTY_IP != 0 {
        let w = k.words();
        let (src, dst) = (w[1], w[2]);
        let [old_src, old_dst] = st.wire.ipv4;
        let diff = csum_diff(old_src, src).wrapping_add(csum_diff(old_dst, dst));
        if pkt.has_ports() {
            ctx.l4_csum_diff(pkt.l4_csum_off(), diff, true, pkt.is_udp())
                .map_err(|_| DropReason::RewriteFailed)?;
        }
        l3_diff = diff;
        let mut new = Buf([0u8; 8]);
        new.set_u32::<0>(src);
        new.set_u32::<4>(dst);
        ctx.store(pkt.l3_off + IP_SRC_OFF, &new.0)
            .map_err(|_| DropReason::RewriteFailed)?;
        st.wire.ipv4 = [src, dst];
    }
    if dirty & DIRTY_TTL != 0 {
        // TTL shares a 16-bit checksum word with the protocol.
        let proto = k.ip_proto;
        let from = u16::from_ne_bytes([st.wire.ttl, proto]);
        let to = u16::from_ne_bytes([pkt.ttl, proto]);
        l3_diff = l3_diff.wrapping_add(((!from) as u32) + to as u32);
        ctx.store(pkt.l3_off + IP_TTL_OFF, &[pkt.ttl])
            .map_err(|_| DropReason::RewriteFailed)?;
        st.wire.ttl = pkt.ttl;
    }
    if dirty & (DIRTY_IP | DIRTY_TTL) != 0 {
        ctx.l3_csum_diff(pkt.l3_off + IP_CSUM_OFF, l3_diff)
            .map_err(|_| DropReason::RewriteFailed)?;
    }
    if dirty & DIRTY_L4 != 0 {
        let (sp, dp) = (k.l4_src.to_be_bytes(), k.l4_dst.to_be_bytes());
        let new = Buf([sp[0], sp[1], dp[0], dp[1]]);
        let ports = new.u32_at::<0>();
        let diff = csum_diff(st.wire.ports, ports);
        ctx.l4_csum_diff(pkt.l4_csum_off(), diff, false, pkt.is_udp())
            .map_err(|_| DropReason::RewriteFailed)?;
        ctx.store(pkt.l4_off, &new.0)
            .map_err(|_| DropReason::RewriteFailed)?;
        st.wire.ports = ports;
    }
    Ok(())
}

/// [`commit`] for IPv6: the hop limit (outside every checksum) and the
/// TCP/UDP ports.
#[inline(always)]
fn commit_ipv6<P: Packet>(ctx: &P, st: &mut ActState, dirty: u32) -> Result<(), DropReason> {
    let pkt = &st.pkt;
    if dirty & DIRTY_TTL != 0 {
        ctx.store(pkt.l3_off + IPV6_HOP_OFF, &[pkt.ttl])
            .map_err(|_| DropReason::RewriteFailed)?;
        st.wire.ttl = pkt.ttl;
    }
    if dirty & DIRTY_L4 != 0 {
        let k = &pkt.key;
        let (sp, dp) = (k.l4_src.to_be_bytes(), k.l4_dst.to_be_bytes());
        let new = Buf([sp[0], sp[1], dp[0], dp[1]]);
        let ports = new.u32_at::<0>();
        let diff = csum_diff(st.wire.ports, ports);
        ctx.l4_csum_diff(pkt.l4_csum_off(), diff, false, pkt.is_udp())
            .map_err(|_| DropReason::RewriteFailed)?;
        ctx.store(pkt.l4_off, &new.0)
            .map_err(|_| DropReason::RewriteFailed)?;
        st.wire.ports = ports;
    }
    Ok(())
}

/// Punt the packet as it is now, with the pipeline's table and metadata.
#[inline(always)]
pub fn punt_from<P: Packet>(
    ctx: &P,
    st: &ActState,
    reason: PuntReason,
    rule_id: u32,
) -> Result<(), DropReason> {
    let meta = (st.metadata[0] as u64) | ((st.metadata[1] as u64) << 32);
    punt(ctx, &st.port, reason, rule_id, st.table, meta)
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

/// Decrement the IPv4 TTL or IPv6 hop limit; a value of 0 or 1 punts the
/// packet (with the changes so far) as [`PuntReason::InvalidTtl`] and ends
/// the action list.
#[inline(always)]
fn dec_ttl<P: Packet>(ctx: &P, st: &mut ActState, rule_id: u32) -> Result<Option<i32>, DropReason> {
    if !st.pkt.is_ip() {
        return Ok(None);
    }
    let ttl = st.pkt.ttl;
    if ttl <= 1 {
        commit(ctx, st)?;
        return match punt_from(ctx, st, PuntReason::InvalidTtl, rule_id) {
            Ok(()) => Ok(Some(P::DROP)),
            Err(_) => Err(DropReason::TtlExceeded),
        };
    }
    st.pkt.ttl = ttl - 1;
    st.dirty |= DIRTY_TTL;
    Ok(None)
}
