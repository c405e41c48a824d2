//! The redirect-only datapath of `cargo xtask bench ceiling`: on one host
//! (run it inside the host's network namespace), every packet that enters
//! from the container's veth goes out of the uplink (`bpf_redirect`) and
//! every packet that enters from the uplink goes into the container
//! (`bpf_redirect_peer`), by the two benchmark-only programs of the BPF
//! object (`daolinet-ebpf/src/ceiling.rs`): no parsing, no map lookup, no
//! rewrite. The cheapest TC datapath for that topology, so what the
//! product's datapath can gain at most. Forwarding needs the containers'
//! neighbour entries to name the other host's uplink MAC (the benchmark
//! sets them); nothing else is looked at.
//!
//! `redirect_ceiling PIN_DIR CONTAINER_VETH UPLINK`: attaches (tcx
//! ingress on both), prints `attached`, and keeps the programs attached
//! until its standard input closes. `PIN_DIR` (on a bpffs) receives the
//! object's pinned maps, which these programs do not use.

use anyhow::{bail, Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::EbpfLoader;
use daolinet_agent::datapath::ifindex;
use std::io::{Read, Write};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pin_dir, veth, uplink] = args.as_slice() else {
        bail!("usage: redirect_ceiling PIN_DIR CONTAINER_VETH UPLINK");
    };
    let (veth_ix, uplink_ix) = (ifindex(veth)?, ifindex(uplink)?);
    let pin_dir = PathBuf::from(pin_dir);
    std::fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let object = daolinet_tests::bpf::object();
    let bytes = object.bytes()?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pin_dir)
        .override_global("DL_CEILING_EGRESS", &uplink_ix, true)
        .override_global("DL_CEILING_PEER", &veth_ix, true)
        .load(&bytes)
        .context("loading the BPF object")?;
    let mut links = Vec::new();
    for (prog, iface) in [("dl_ceiling_egress", veth), ("dl_ceiling_peer", uplink)] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(prog)
            .with_context(|| format!("no program {prog} in the BPF object"))?
            .try_into()?;
        p.load()
            .with_context(|| format!("the verifier rejected {prog}"))?;
        links.push(
            p.attach(iface, TcAttachType::Ingress)
                .with_context(|| format!("attaching {prog} to {iface}"))?,
        );
    }
    println!("attached");
    std::io::stdout().flush()?;
    // Until the benchmark closes our standard input (or exits).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(links);
    Ok(())
}
