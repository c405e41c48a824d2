//! One packet API over the two program types.
//!
//! The pipeline ([`crate::datapath`]) is written once against the [`Packet`]
//! trait and monomorphised for TC ([`TcContext`]) and XDP ([`XdpContext`]).
//! XDP touches packet bytes only through the load/store helpers
//! (`bpf_xdp_load_bytes` and friends), so a multi-buffer frame is handled
//! by the kernel. TC, the hot path, reads and writes headers that lie in the
//! skb's linear part in place (one bounds check instead of a helper call,
//! which this machine's return-stack mitigation makes costly) and falls
//! back to `bpf_skb_load_bytes`/`bpf_skb_store_bytes` otherwise; the
//! TCP/UDP checksum always goes through `bpf_l4_csum_replace`, which knows
//! the skb's checksum offload state. Because the program writes packet data
//! directly, the verifier gives it a prologue that unclones a cloned skb
//! (as the store helper would before its first write).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        xdp_action, BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK,
        TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::generated::{
        bpf_clone_redirect, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_redirect,
        bpf_redirect_peer, bpf_skb_change_head, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_store_bytes, bpf_skb_vlan_pop, bpf_skb_vlan_push, bpf_xdp_get_buff_len,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};
use daolinet_common::{Action, DropReason, FlowEntry, PortInfo};

use crate::actions::ActState;

/// Packet bytes copied out by [`Packet::load`], 8-byte aligned so that the
/// compiler reads multi-byte fields with one load instead of byte by byte
/// (BPF has no unaligned loads).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Buf<const N: usize>(pub [u8; N]);

impl<const N: usize> Buf<N> {
    /// The 32-bit word at byte `I` in memory byte order (one aligned load;
    /// `I` is checked at compile time).
    #[inline(always)]
    pub fn u32_at<const I: usize>(&self) -> u32 {
        const { assert!(I.is_multiple_of(4) && I + 4 <= N) };
        // SAFETY: in bounds and 4-aligned (the buffer is 8-aligned).
        unsafe { self.0.as_ptr().add(I).cast::<u32>().read() }
    }

    /// Set the 32-bit word at byte `I` (memory byte order; one aligned
    /// store; `I` is checked at compile time).
    #[inline(always)]
    pub fn set_u32<const I: usize>(&mut self, v: u32) {
        const { assert!(I.is_multiple_of(4) && I + 4 <= N) };
        // SAFETY: in bounds and 4-aligned (the buffer is 8-aligned).
        unsafe { self.0.as_mut_ptr().add(I).cast::<u32>().write(v) }
    }

    /// The 16-bit word at byte `I` in network byte order, as a number.
    #[inline(always)]
    pub fn be16_at<const I: usize>(&self) -> u16 {
        const { assert!(I.is_multiple_of(2) && I + 2 <= N) };
        // SAFETY: in bounds and 2-aligned (the buffer is 8-aligned).
        u16::from_be(unsafe { self.0.as_ptr().add(I).cast::<u16>().read() })
    }
}

/// Header offsets up to this are read in place when the linear part holds
/// them ([`Packet::load`] for TC); beyond, through the load helper. (A
/// bound the verifier needs for a variable offset on a packet pointer.)
const MAX_DIRECT_OFF: usize = 128;

/// Where an output action sends the packet.
#[derive(Clone, Copy)]
pub enum Target {
    /// Into a container: `bpf_redirect_peer` in TC (straight into the
    /// container's namespace).
    Peer(u32),
    /// Out of an interface (egress): `bpf_redirect`.
    Egress(u32),
    /// Back out of the interface the packet came in on.
    InPort(u32),
    /// Into the host stack as if received on that interface (TC:
    /// `bpf_redirect` with `BPF_F_INGRESS`; the LOCAL port's device).
    Ingress(u32),
}

impl Target {
    /// The target for an output to `port` of a packet that came in on
    /// `from`: into a container straight into its namespace, except from
    /// the LOCAL port, whose program runs at egress, where only a redirect
    /// to the veth's egress works.
    #[inline(always)]
    pub fn for_port(port: &PortInfo, from: &PortInfo) -> Self {
        if port.is_container() && !from.is_local() {
            Target::Peer(port.ifindex)
        } else {
            Target::Egress(port.ifindex)
        }
    }
}

/// What an output did.
#[derive(Clone, Copy)]
pub enum Sent {
    /// The packet leaves with this verdict; the program ends.
    Final(i32),
    /// A copy was sent (TC `bpf_clone_redirect`); the original stays ours.
    Copy,
    /// Nothing was sent (XDP cannot clone; only the last output counts).
    Skipped,
}

/// The operations the datapath needs from a packet context.
///
/// Errors are unit: the caller knows which [`DropReason`] a failure means.
pub trait Packet {
    /// Verdict that hands the packet to the kernel stack.
    const PASS: i32;
    /// Verdict that drops the packet.
    const DROP: i32;
    /// [`Packet::ring_bell`] can send (the program type can clone).
    const BELL: bool;

    /// Full packet length in bytes (including non-linear parts).
    fn len(&self) -> u32;
    /// Interface the packet arrived on.
    fn ifindex(&self) -> u32;
    /// The VLAN tag the kernel keeps in packet metadata instead of the
    /// packet bytes (it untags on receive, before TC), if any: (TPID in
    /// host order, TCI).
    fn offloaded_vlan(&self) -> Option<(u16, u16)>;
    /// Copy `N` bytes at `off` out of the packet.
    fn load<const N: usize>(&self, off: u32) -> Result<Buf<N>, ()>;
    /// Write `N` bytes at `off`.
    fn store<const N: usize>(&self, off: u32, bytes: &[u8; N]) -> Result<(), ()>;
    /// Fix the IPv4 header checksum at `off` by `diff`, the one's-complement
    /// sum of the new 16-bit words and the complemented old ones
    /// (see [`csum_diff`]).
    fn l3_csum_diff(&self, off: u32, diff: u32) -> Result<(), ()>;
    /// Fix a TCP/UDP checksum at `off` by `diff` (as for
    /// [`Packet::l3_csum_diff`]). `pseudo`: the changed words are part of
    /// the pseudo-header (IP addresses). `udp`: a zero checksum means
    /// "none" and stays zero.
    fn l4_csum_diff(&self, off: u32, diff: u32, pseudo: bool, udp: bool) -> Result<(), ()>;
    /// Send the packet to `target`. With `last` the packet itself leaves
    /// ([`Sent::Final`]); otherwise a copy is sent, if the program type can.
    /// `Err` means the kernel refused the redirect.
    fn output(&self, target: Target, last: bool) -> Result<Sent, DropReason>;
    /// Send a copy of the packet out of interface `ifindex` (the agent's
    /// punt bell, [`daolinet_common::DatapathConfig::punt_bell`]); false
    /// when it could not be sent or the program type cannot clone.
    fn ring_bell(&self, ifindex: u32) -> bool;
    /// Copy the first `len` bytes of the packet to `dst`; `len` must be in
    /// `1..=PUNT_CAP` and `dst` must point into a buffer that large.
    fn copy_to(&self, dst: *mut u8, len: u32) -> Result<(), ()>;
    /// Run [`crate::actions::step`] on `a` in the global (separately
    /// verified) function of this program type; `last` (0/1): it is the
    /// output that decides the verdict.
    fn step_out_of_line(&self, st: &mut ActState, a: &Action, last: u32) -> i32;
    /// [`Packet::step_out_of_line`] with every action (the pipeline's).
    fn full_step_out_of_line(&self, st: &mut ActState, a: &Action, last: u32) -> i32;
    /// Run [`crate::pipeline::group`] in the global function of this
    /// program type.
    fn group_out_of_line(&self, st: &mut ActState, id: u32, last: bool) -> i32;
    /// Continue in this program type's pipeline program (a tail call: a
    /// fresh stack). Returns only when the call failed.
    fn tail_call_pipeline(&self);
    /// Run [`crate::pipeline::rule`] in the global function of this
    /// program type.
    fn rule_out_of_line(&self, st: &mut ActState, entry: &FlowEntry) -> i32;
    /// Run [`crate::pipeline::action_set`] in the global function of this
    /// program type.
    fn action_set_out_of_line(&self, st: &mut ActState) -> i32;
    /// Run [`crate::parse::parse_more`] in the global (separately verified)
    /// function of this program type: 0, or a [`DropReason`] + 1.
    fn parse_out_of_line(&self, p: &mut crate::parse::Parsed) -> i32;
    /// Run [`crate::rewrite::apply`] in the global function of this
    /// program type: 0, or a [`DropReason`] + 1.
    fn rewrite_out_of_line(&self, st: &mut ActState, a: &Action) -> i32;
    /// Run [`crate::actions::commit`] in the global function of this program
    /// type (for the rarer actions: their frames stay small): 0, or a
    /// [`DropReason`] + 1.
    fn commit_out_of_line(&self, st: &mut ActState) -> i32;
    /// Parse the packet again after a push or pop
    /// ([`crate::rewrite::reparse`]) in the global function of this program
    /// type: 0, or a [`DropReason`] + 1.
    fn reparse_out_of_line(&self, st: &mut ActState) -> i32;
    /// Move the `n` (1..=[`SHIFT_CHUNK`]) bytes at `off` (at least 4) 4
    /// bytes towards the start, with the helpers (any offset, no bounds
    /// for the verifier to follow).
    fn shift_back4(&self, off: u32, n: u32) -> Result<(), ()>;
    /// [`Packet::shift_back4`] in the global function of this program type
    /// (one verification for every step of a pop): 0 or 1 (failed).
    fn shift_out_of_line(&self, off: u32, n: u32) -> i32;
    /// Push an outer VLAN tag (TPID `proto`, host order). Err where the
    /// program type cannot.
    fn vlan_push(&self, proto: u16, tci: u16) -> Result<(), ()>;
    /// Pop the outer VLAN tag. Err where the program type cannot.
    fn vlan_pop(&self) -> Result<(), ()>;
    /// Make room for `n` bytes at the start of the packet (its bytes move
    /// `n` further). Err where the program type cannot.
    fn grow_head(&self, n: u32) -> Result<(), ()>;
    /// Cut the packet to `len` bytes. Err where the program type cannot.
    fn trim(&self, len: u32) -> Result<(), ()>;
    /// Fill the packet's [`crate::parse::Parsed::ext`] in the global
    /// function of this program type: 0, or a [`DropReason`] + 1.
    fn fill_ext_out_of_line(&self, p: &mut crate::parse::Parsed) -> i32;
    /// Before passing the packet to the host stack (output to LOCAL): make
    /// the stack take it as addressed to this host, as Open vSwitch's LOCAL
    /// port does. TC: the kernel classified the frame by its destination
    /// MAC *before* the program ran (a container's frame to the gateway MAC
    /// is PACKET_OTHERHOST on the host side of its veth, and IP input drops
    /// those), so OTHERHOST becomes HOST. XDP: nothing, the skb is built
    /// after the program, from the rewritten frame.
    fn to_host(&self);
}

/// `x`, through a volatile stack slot: the compiler knows nothing of the
/// result, so a mask applied to it stays where it is written.
#[inline(always)]
pub fn opaque(x: u32) -> u32 {
    let mut v = x;
    // SAFETY: a local's address, valid for both accesses.
    unsafe {
        core::ptr::write_volatile(&mut v, x);
        core::ptr::read_volatile(&v)
    }
}

/// Bytes moved per step when a packet shrinks in the middle (pop).
pub const SHIFT_CHUNK: u32 = 64;

/// The address of the `n` bytes at `off` of a TC packet when the skb's
/// linear part holds them and `off` is within [`MAX_DIRECT_OFF`] (the bound
/// the verifier needs for a variable offset on a packet pointer): in-place
/// access (see the module docs).
#[inline(always)]
fn linear(ctx: &TcContext, off: u32, n: usize) -> Option<usize> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let o = off as usize;
    (o <= MAX_DIRECT_OFF && start + o + n <= end).then_some(start + o)
}

impl Packet for TcContext {
    const PASS: i32 = TC_ACT_OK;
    const DROP: i32 = TC_ACT_SHOT;
    const BELL: bool = true;

    #[inline(always)]
    fn to_host(&self) {
        // PACKET_OTHERHOST and PACKET_HOST (linux/if_packet.h).
        // SAFETY: the context pointer is valid for the whole program run.
        if unsafe { (*self.skb.skb).pkt_type } == 3 {
            // Cannot fail for these two types; if it did, IP input drops it.
            let _ = self.change_type(0);
        }
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.skb.skb).len }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: as above; on tc ingress this is the device the program is
        // attached to.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn offloaded_vlan(&self) -> Option<(u16, u16)> {
        // SAFETY: as above.
        let (present, tci) = unsafe { ((*self.skb.skb).vlan_present, (*self.skb.skb).vlan_tci) };
        if present != 0 {
            // SAFETY: as above. The context holds the kernel's __be16 as is.
            let proto = u16::from_be(unsafe { (*self.skb.skb).vlan_proto } as u16);
            Some((proto, tci as u16))
        } else {
            None
        }
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: u32) -> Result<Buf<N>, ()> {
        // Headers in the linear part (the usual case) are read in place:
        // a bounds check instead of a helper call (not for single bytes:
        // see `store`).
        let direct = if N >= 2 { linear(self, off, N) } else { None };
        if let Some(at) = direct {
            // SAFETY: the N bytes at `at` are inside the linear packet data
            // (checked by `linear`, and by the verifier).
            // Exactly N bytes: `Buf<N>` itself is padded to its alignment.
            return Ok(Buf(unsafe { (at as *const [u8; N]).read_unaligned() }));
        }
        let mut buf = MaybeUninit::<Buf<N>>::uninit();
        // SAFETY: the helper writes exactly N bytes into `buf` or fails.
        let ret = unsafe {
            bpf_skb_load_bytes(self.skb.skb.cast(), off, buf.as_mut_ptr().cast(), N as u32)
        };
        if ret == 0 {
            // SAFETY: fully written by the helper.
            Ok(unsafe { buf.assume_init() })
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn store<const N: usize>(&self, off: u32, bytes: &[u8; N]) -> Result<(), ()> {
        // No skb->csum recompute, in place or by the helper (flags 0). For
        // CHECKSUM_COMPLETE the MAC header is outside the sum, and IP/L4
        // changes are balanced by the checksum fix-ups below (as Cilium
        // does). In place when the linear part holds the bytes: a program
        // that writes packet data directly gets a prologue from the verifier
        // that unclones a cloned skb first, as the helper would.
        // Not for single bytes: the compiler turns that bounds check into
        // `start + o < end`, from which this verifier learns no range.
        let direct = if N >= 2 { linear(self, off, N) } else { None };
        if let Some(at) = direct {
            let dst = at as *mut u8;
            // Word by word: a 12-byte array copy becomes a call to a
            // byte-wise memmove subprogram instead of inline stores.
            let mut i = 0;
            while i + 4 <= N {
                let w = [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
                // SAFETY: the N bytes at `dst` are inside the linear,
                // writable packet data (checked above, and by the verifier).
                unsafe { dst.add(i).cast::<[u8; 4]>().write_unaligned(w) };
                i += 4;
            }
            while i < N {
                // SAFETY: as above.
                unsafe { dst.add(i).write(bytes[i]) };
                i += 1;
            }
            return Ok(());
        }
        // SAFETY: reads N bytes from `bytes`.
        let ret = unsafe {
            bpf_skb_store_bytes(self.skb.skb.cast(), off, bytes.as_ptr().cast(), N as u32, 0)
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn l3_csum_diff(&self, off: u32, diff: u32) -> Result<(), ()> {
        // In place when the linear part holds it (see `store`): the IPv4
        // header checksum is not part of any offload state.
        if let Some(at) = linear(self, off, 2) {
            let p = at as *mut [u8; 2];
            // SAFETY: the 2 bytes at `p` are inside the linear, writable
            // packet data (checked above, and by the verifier).
            unsafe {
                let sum = u16::from_ne_bytes(p.read_unaligned());
                p.write_unaligned(csum_apply(sum, diff).to_ne_bytes());
            }
            return Ok(());
        }
        // Size 0: `to` is a checksum difference (`from` must be 0).
        // SAFETY: plain helper call on our skb.
        let ret = unsafe { bpf_l3_csum_replace(self.skb.skb.cast(), off, 0, diff as u64, 0) };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn l4_csum_diff(&self, off: u32, diff: u32, pseudo: bool, udp: bool) -> Result<(), ()> {
        // Size 0 in the flags: `to` is a checksum difference.
        let mut flags = 0u64;
        if pseudo {
            flags |= BPF_F_PSEUDO_HDR as u64;
        }
        if udp {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        // SAFETY: plain helper call on our skb. The helper knows about
        // CHECKSUM_PARTIAL (only pseudo-header changes touch the field
        // then) and CHECKSUM_COMPLETE (skb->csum follows).
        let ret = unsafe { bpf_l4_csum_replace(self.skb.skb.cast(), off, 0, diff as u64, flags) };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn ring_bell(&self, ifindex: u32) -> bool {
        // SAFETY: plain helper call on our skb.
        unsafe { bpf_clone_redirect(self.skb.skb.cast(), ifindex, 0) == 0 }
    }

    #[inline(always)]
    fn output(&self, target: Target, last: bool) -> Result<Sent, DropReason> {
        if !last {
            // A copy goes out now; later actions keep working on the original.
            let (ifindex, flags) = match target {
                Target::Peer(i) | Target::Egress(i) | Target::InPort(i) => (i, 0),
                Target::Ingress(i) => (i, BPF_F_INGRESS as u64),
            };
            // SAFETY: plain helper call on our skb.
            let ret = unsafe { bpf_clone_redirect(self.skb.skb.cast(), ifindex, flags) };
            return if ret == 0 {
                Ok(Sent::Copy)
            } else {
                Err(DropReason::RedirectFailed)
            };
        }
        // SAFETY: plain helper calls.
        let ret = unsafe {
            match target {
                Target::Peer(i) => bpf_redirect_peer(i, 0),
                Target::Egress(i) | Target::InPort(i) => bpf_redirect(i, 0),
                Target::Ingress(i) => bpf_redirect(i, BPF_F_INGRESS as u64),
            }
        };
        if ret == TC_ACT_REDIRECT as i64 {
            Ok(Sent::Final(TC_ACT_REDIRECT))
        } else {
            Err(DropReason::RedirectFailed)
        }
    }

    #[inline(always)]
    fn copy_to(&self, dst: *mut u8, len: u32) -> Result<(), ()> {
        // SAFETY: the caller bounds `len` to the buffer behind `dst`.
        let ret = unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), 0, dst.cast(), len) };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn step_out_of_line(&self, st: &mut ActState, a: &Action, last: u32) -> i32 {
        crate::programs::dl_action_tc(self.skb.skb, st, a, last)
    }

    #[inline(always)]
    fn full_step_out_of_line(&self, st: &mut ActState, a: &Action, last: u32) -> i32 {
        crate::programs::dl_paction_tc(self.skb.skb, st, a, last)
    }

    #[inline(always)]
    fn group_out_of_line(&self, st: &mut ActState, id: u32, last: bool) -> i32 {
        crate::programs::dl_group_tc(self.skb.skb, st, id, u32::from(last))
    }

    #[inline(always)]
    fn tail_call_pipeline(&self) {
        // SAFETY: the program array holds programs of this type only.
        unsafe { crate::maps::DL_PIPELINE_TC.tail_call(self, 0) };
    }

    #[inline(always)]
    fn rule_out_of_line(&self, st: &mut ActState, entry: &FlowEntry) -> i32 {
        crate::programs::dl_rule_tc(self.skb.skb, st, entry)
    }

    #[inline(always)]
    fn action_set_out_of_line(&self, st: &mut ActState) -> i32 {
        crate::programs::dl_aset_tc(self.skb.skb, st)
    }

    #[inline(always)]
    fn parse_out_of_line(&self, p: &mut crate::parse::Parsed) -> i32 {
        crate::programs::dl_parse_tc(self.skb.skb, p)
    }

    #[inline(always)]
    fn rewrite_out_of_line(&self, st: &mut ActState, a: &Action) -> i32 {
        crate::programs::dl_rewrite_tc(self.skb.skb, st, a)
    }

    #[inline(always)]
    fn reparse_out_of_line(&self, st: &mut ActState) -> i32 {
        crate::programs::dl_reparse_tc(self.skb.skb, st)
    }

    #[inline(always)]
    fn commit_out_of_line(&self, st: &mut ActState) -> i32 {
        crate::programs::dl_commit_tc(self.skb.skb, st)
    }

    #[inline(always)]
    fn shift_out_of_line(&self, off: u32, n: u32) -> i32 {
        crate::programs::dl_shift_tc(self.skb.skb, off, n)
    }

    #[inline(always)]
    fn shift_back4(&self, off: u32, n: u32) -> Result<(), ()> {
        let n = (n.wrapping_sub(1) & (SHIFT_CHUNK - 1)) + 1;
        if off < 4 {
            return Err(());
        }
        let mut buf = [0u8; SHIFT_CHUNK as usize];
        // SAFETY: the helpers read or write `n` <= SHIFT_CHUNK bytes of `buf`.
        let ret = unsafe {
            let r = bpf_skb_load_bytes(self.skb.skb.cast(), off, buf.as_mut_ptr().cast(), n);
            if r != 0 {
                r
            } else {
                bpf_skb_store_bytes(self.skb.skb.cast(), off - 4, buf.as_ptr().cast(), n, 0)
            }
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn fill_ext_out_of_line(&self, p: &mut crate::parse::Parsed) -> i32 {
        crate::programs::dl_fill_ext_tc(self.skb.skb, p)
    }

    #[inline(always)]
    fn vlan_push(&self, proto: u16, tci: u16) -> Result<(), ()> {
        // SAFETY: plain helper call on our skb (it inserts a tag the
        // kernel already holds in metadata into the bytes first).
        let ret = unsafe { bpf_skb_vlan_push(self.skb.skb.cast(), proto.to_be(), tci) };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn vlan_pop(&self) -> Result<(), ()> {
        // SAFETY: plain helper call on our skb.
        let ret = unsafe { bpf_skb_vlan_pop(self.skb.skb.cast()) };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn grow_head(&self, n: u32) -> Result<(), ()> {
        // SAFETY: plain helper call on our skb.
        let ret = unsafe { bpf_skb_change_head(self.skb.skb.cast(), n, 0) };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn trim(&self, len: u32) -> Result<(), ()> {
        // SAFETY: plain helper call on our skb.
        let ret = unsafe { bpf_skb_change_tail(self.skb.skb.cast(), len, 0) };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }
}

/// Checksum difference for a 32-bit field changing from `from` to `to`
/// (RFC 1624: `~m + m'` over its two 16-bit words, not folded). Values in
/// memory byte order, which one's-complement arithmetic does not care
/// about; differences add up (with [`u32::wrapping_add`] of a few terms,
/// far from overflowing) and go to [`Packet::l3_csum_diff`] /
/// [`Packet::l4_csum_diff`].
#[inline(always)]
pub fn csum_diff(from: u32, to: u32) -> u32 {
    let nf = !from;
    (nf & 0xffff) + (nf >> 16) + (to & 0xffff) + (to >> 16)
}

/// Apply a checksum difference to a stored checksum:
/// `HC' = ~(~HC + diff)` (RFC 1624, eqn. 3), folded to 16 bits.
#[inline(always)]
pub fn csum_apply(sum: u16, diff: u32) -> u16 {
    let mut acc: u64 = (!sum) as u64 + diff as u64;
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

impl Packet for XdpContext {
    const PASS: i32 = xdp_action::XDP_PASS as i32;
    const DROP: i32 = xdp_action::XDP_DROP as i32;
    const BELL: bool = false;

    #[inline(always)]
    fn to_host(&self) {}

    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: plain helper call on our frame.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as u32 }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is valid for the whole program run.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn offloaded_vlan(&self) -> Option<(u16, u16)> {
        // XDP sees the frame as received: tags are in the data.
        None
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: u32) -> Result<Buf<N>, ()> {
        let mut buf = MaybeUninit::<Buf<N>>::uninit();
        // SAFETY: the helper writes exactly N bytes into `buf` or fails.
        let ret = unsafe { bpf_xdp_load_bytes(self.ctx, off, buf.as_mut_ptr().cast(), N as u32) };
        if ret == 0 {
            // SAFETY: fully written by the helper.
            Ok(unsafe { buf.assume_init() })
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn store<const N: usize>(&self, off: u32, bytes: &[u8; N]) -> Result<(), ()> {
        // SAFETY: the helper reads N bytes from `bytes` (it takes a mutable
        // pointer in its C signature but does not write through it).
        let ret = unsafe {
            bpf_xdp_store_bytes(self.ctx, off, bytes.as_ptr().cast_mut().cast(), N as u32)
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn l3_csum_diff(&self, off: u32, diff: u32) -> Result<(), ()> {
        let sum = u16::from_ne_bytes(self.load::<2>(off)?.0);
        self.store(off, &csum_apply(sum, diff).to_ne_bytes())
    }

    #[inline(always)]
    fn l4_csum_diff(&self, off: u32, diff: u32, _pseudo: bool, udp: bool) -> Result<(), ()> {
        // A frame from a NIC carries a complete checksum, so pseudo-header
        // and payload changes are folded in the same way.
        let sum = u16::from_ne_bytes(self.load::<2>(off)?.0);
        if udp && sum == 0 {
            // UDP without checksum stays without checksum.
            return Ok(());
        }
        let mut new = csum_apply(sum, diff);
        if udp && new == 0 {
            new = 0xffff;
        }
        self.store(off, &new.to_ne_bytes())
    }

    /// XDP cannot clone: punts from XDP wake the reader through the ring.
    #[inline(always)]
    fn ring_bell(&self, _ifindex: u32) -> bool {
        false
    }

    /// XDP cannot clone: only the last output of a rule takes effect, earlier
    /// ones are skipped. Output back to the ingress port is `XDP_TX`.
    #[inline(always)]
    fn output(&self, target: Target, last: bool) -> Result<Sent, DropReason> {
        if !last {
            return Ok(Sent::Skipped);
        }
        let ifindex = match target {
            Target::InPort(_) => return Ok(Sent::Final(xdp_action::XDP_TX as i32)),
            // XDP runs on the uplink only, whose output to LOCAL passes.
            Target::Ingress(_) => return Ok(Sent::Final(xdp_action::XDP_PASS as i32)),
            Target::Peer(i) | Target::Egress(i) => i,
        };
        // SAFETY: plain helper call.
        let ret = unsafe { bpf_redirect(ifindex, 0) };
        if ret == xdp_action::XDP_REDIRECT as i64 {
            Ok(Sent::Final(xdp_action::XDP_REDIRECT as i32))
        } else {
            Err(DropReason::RedirectFailed)
        }
    }

    #[inline(always)]
    fn copy_to(&self, dst: *mut u8, len: u32) -> Result<(), ()> {
        // SAFETY: the caller bounds `len` to the buffer behind `dst`.
        let ret = unsafe { bpf_xdp_load_bytes(self.ctx, 0, dst.cast(), len) };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn step_out_of_line(&self, st: &mut ActState, a: &Action, last: u32) -> i32 {
        crate::programs::dl_action_xdp(self.ctx, st, a, last)
    }

    #[inline(always)]
    fn full_step_out_of_line(&self, st: &mut ActState, a: &Action, last: u32) -> i32 {
        crate::programs::dl_paction_xdp(self.ctx, st, a, last)
    }

    #[inline(always)]
    fn group_out_of_line(&self, st: &mut ActState, id: u32, last: bool) -> i32 {
        crate::programs::dl_group_xdp(self.ctx, st, id, u32::from(last))
    }

    #[inline(always)]
    fn tail_call_pipeline(&self) {
        // SAFETY: as for TC.
        unsafe { crate::maps::DL_PIPELINE_XDP.tail_call(self, 0) };
    }

    #[inline(always)]
    fn rule_out_of_line(&self, st: &mut ActState, entry: &FlowEntry) -> i32 {
        crate::programs::dl_rule_xdp(self.ctx, st, entry)
    }

    #[inline(always)]
    fn action_set_out_of_line(&self, st: &mut ActState) -> i32 {
        crate::programs::dl_aset_xdp(self.ctx, st)
    }

    #[inline(always)]
    fn parse_out_of_line(&self, p: &mut crate::parse::Parsed) -> i32 {
        crate::programs::dl_parse_xdp(self.ctx, p)
    }

    #[inline(always)]
    fn rewrite_out_of_line(&self, st: &mut ActState, a: &Action) -> i32 {
        crate::programs::dl_rewrite_xdp(self.ctx, st, a)
    }

    #[inline(always)]
    fn reparse_out_of_line(&self, st: &mut ActState) -> i32 {
        crate::programs::dl_reparse_xdp(self.ctx, st)
    }

    #[inline(always)]
    fn commit_out_of_line(&self, st: &mut ActState) -> i32 {
        crate::programs::dl_commit_xdp(self.ctx, st)
    }

    #[inline(always)]
    fn shift_out_of_line(&self, off: u32, n: u32) -> i32 {
        crate::programs::dl_shift_xdp(self.ctx, off, n)
    }

    #[inline(always)]
    fn shift_back4(&self, off: u32, n: u32) -> Result<(), ()> {
        let n = (n.wrapping_sub(1) & (SHIFT_CHUNK - 1)) + 1;
        if off < 4 {
            return Err(());
        }
        let mut buf = [0u8; SHIFT_CHUNK as usize];
        // SAFETY: the helpers read or write `n` <= SHIFT_CHUNK bytes of `buf`.
        let ret = unsafe {
            let r = bpf_xdp_load_bytes(self.ctx, off, buf.as_mut_ptr().cast(), n);
            if r != 0 {
                r
            } else {
                bpf_xdp_store_bytes(self.ctx, off - 4, buf.as_mut_ptr().cast(), n)
            }
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn fill_ext_out_of_line(&self, p: &mut crate::parse::Parsed) -> i32 {
        crate::programs::dl_fill_ext_xdp(self.ctx, p)
    }

    // Tags and label stack entries are not pushed or popped on the XDP
    // uplink (DropReason::Unsupported): use the TC uplink for such flows.
    #[inline(always)]
    fn vlan_push(&self, _proto: u16, _tci: u16) -> Result<(), ()> {
        Err(())
    }

    #[inline(always)]
    fn vlan_pop(&self) -> Result<(), ()> {
        Err(())
    }

    #[inline(always)]
    fn grow_head(&self, _n: u32) -> Result<(), ()> {
        Err(())
    }

    #[inline(always)]
    fn trim(&self, _len: u32) -> Result<(), ()> {
        Err(())
    }
}
