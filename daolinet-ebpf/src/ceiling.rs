//! Benchmark only: the redirect-only programs of `cargo xtask bench
//! ceiling`, the cheapest TC datapath a two-host veth topology can have
//! (no parsing, no map lookup, no rewrite, no counter), against which the
//! product's datapath is measured. The agent never loads them; the
//! benchmark's loader (`tests/examples/redirect_ceiling.rs`) sets the two
//! ifindexes below at load time (frozen `.rodata`: constants for the
//! verifier, as if written into the program).

use aya_ebpf::{
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};

/// The device [`dl_ceiling_egress`] sends every packet out of (the uplink).
#[no_mangle]
static DL_CEILING_EGRESS: u32 = 0;

/// The veth whose peer [`dl_ceiling_peer`] hands every packet to (the
/// container's host-side veth).
#[no_mangle]
static DL_CEILING_PEER: u32 = 0;

/// On a container's veth (ingress): every packet out of the uplink,
/// `bpf_redirect` as the product does.
#[classifier]
pub fn dl_ceiling_egress(_ctx: TcContext) -> i32 {
    // SAFETY: a read of a static; the helper takes plain integers.
    unsafe { bpf_redirect(core::ptr::read_volatile(&DL_CEILING_EGRESS), 0) as i32 }
}

/// On the uplink (ingress): every packet into the container,
/// `bpf_redirect_peer` as the product does.
#[classifier]
pub fn dl_ceiling_peer(_ctx: TcContext) -> i32 {
    // SAFETY: as above.
    unsafe { bpf_redirect_peer(core::ptr::read_volatile(&DL_CEILING_PEER), 0) as i32 }
}
