//! Writes a large model straight into a new controller store (redb), for
//! the scale run of `cargo xtask bench controller`:
//!
//! ```text
//! populate_store STORE HOSTS CONTAINERS NETWORKS POOL
//! ```
//!
//! `HOSTS` hosts (`sc-hK`) and `CONTAINERS` containers (`sc-cI`) spread
//! round-robin over the hosts and over `NETWORKS` tenant networks that all
//! use the subnet 10.50.0.0/16 (overlapping tenants: each logical IP is
//! held by up to `NETWORKS` containers), physical IPs from `POOL` (which the
//! controller must then be given as `--physical-pool`).
//!
//! Through the REST API every object is one mutation that validates and
//! clones the whole model, which at this size takes hours; here the
//! objects are valid by construction (unique names, datapath ids, host
//! addresses, ports per host, logical IP per network, physical IPs and
//! cookie ids; the IPAM cursors set past what was handed out) and go to the
//! store in a few large batches.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use daolinet_controller::store::{batch_of, RedbStore, Store};
use daolinet_policy::addr::{Dpid, Ipv4Net, MacAddr};
use daolinet_policy::model::{Change, Container, Host, Meta, Network, Object};

/// Objects per store batch.
const CHUNK: usize = 20_000;

fn ip_add(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, hosts, containers, networks, pool] = args.as_slice() else {
        bail!("usage: populate_store STORE HOSTS CONTAINERS NETWORKS POOL");
    };
    let (hosts, containers, networks): (u32, u32, u32) =
        (hosts.parse()?, containers.parse()?, networks.parse()?);
    let pool: Ipv4Net = pool.parse().map_err(|e| anyhow::anyhow!("POOL: {e}"))?;
    if hosts == 0 || hosts > 60_000 || networks == 0 {
        bail!("HOSTS must be 1..=60000 and NETWORKS at least 1");
    }
    if containers.div_ceil(networks) > 65_000 {
        bail!("more than 65000 containers per network");
    }
    if u64::from(containers) + 2 > (1u64 << (32 - pool.prefix_len())) {
        bail!("POOL {pool} is too small for {containers} containers");
    }
    let path = Path::new(store);
    if path.exists() {
        bail!("{} exists: give a new store", path.display());
    }
    let st = RedbStore::open(path).with_context(|| format!("creating {}", path.display()))?;

    let mut changes: Vec<Change> = Vec::new();
    let write = |changes: &mut Vec<Change>, force: bool| -> Result<()> {
        if changes.len() >= CHUNK || (force && !changes.is_empty()) {
            st.apply(batch_of(changes)?)?;
            changes.clear();
        }
        Ok(())
    };
    for k in 0..hosts {
        changes.push(Change::Put(Object::Host(Host {
            name: format!("sc-h{k}"),
            dpid: Dpid(0x5c00_0000_0000 + u64::from(k)),
            ip: ip_add(Ipv4Addr::new(100, 64, 0, 1), k),
            mac: MacAddr([0x02, 0x5c, 0, 0, (k >> 8) as u8, k as u8]),
            uplink_port: 1,
            local_mac: None,
        })));
    }
    let subnet: Ipv4Net = "10.50.0.0/16"
        .parse()
        .map_err(|e| anyhow::anyhow!("subnet: {e}"))?;
    for n in 0..networks {
        changes.push(Change::Put(Object::Network(Network {
            name: format!("sc-net{n}"),
            subnet,
            gateway: Ipv4Addr::new(10, 50, 0, 1),
            tenant: Some(format!("sc-t{n}")),
            nat_out: false,
        })));
    }
    write(&mut changes, true)?;
    let mut meta = Meta::default();
    for i in 0..containers {
        let (k, n) = (i % hosts, i % networks);
        let ip = ip_add(Ipv4Addr::new(10, 50, 0, 2), i / networks);
        let physical_ip = ip_add(pool.network(), 1 + i);
        changes.push(Change::Put(Object::Container(Container {
            id: format!("sc-c{i}"),
            name: format!("sc-c{i}"),
            network: format!("sc-net{n}"),
            ip,
            mac: MacAddr([
                0x02,
                0x5d,
                (i >> 24) as u8,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ]),
            host: format!("sc-h{k}"),
            port: 10 + i / hosts,
            physical_ip,
            cookie_id: 1 + i,
        })));
        meta.logical_cursor.insert(format!("sc-net{n}"), ip);
        meta.physical_cursor = Some(physical_ip);
        meta.next_cookie_id = 2 + i;
        write(&mut changes, false)?;
    }
    changes.push(Change::Put(Object::Meta(meta)));
    write(&mut changes, true)?;
    println!(
        "wrote {hosts} hosts, {networks} networks and {containers} containers to {}",
        path.display()
    );
    Ok(())
}
