//! The etcd store against a real 3-member etcd cluster (Debian's
//! etcd-server, started by the test in a network namespace of its own):
//! the store contract, several controllers converging on one model without
//! losing each other's writes, and a member killed.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use daolinet_controller::service::Controller;
use daolinet_controller::store::{load_model_at, EtcdConfig, EtcdStore, Store};
use daolinet_policy::model::{ContainerSpec, Host, NetworkSpec};
use daolinet_policy::Config;
use daolinet_testlab::{eventually, EtcdCluster, Lab, Need, ETCD_PROGRAMS};

// The shared store contract refers to `crate::store`.
mod store {
    pub use daolinet_controller::store::*;
}
#[path = "../src/store/contract.rs"]
mod contract;

fn lab() -> Option<Lab> {
    Lab::new(&[
        Need::Program(ETCD_PROGRAMS[0]),
        Need::Program(ETCD_PROGRAMS[1]),
    ])
}

/// A key prefix of its own for each use of a cluster.
fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("/t{}/", N.fetch_add(1, Ordering::Relaxed))
}

fn config(cluster: &EtcdCluster, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: prefix.to_string(),
        timeout: Duration::from_secs(5),
    }
}

/// Runs `f` on a thread inside the cluster's namespace.
fn inside<T: Send + 'static>(c: &EtcdCluster, f: impl FnOnce() -> T + Send + 'static) -> T {
    c.netns().enter(move || Ok(f())).unwrap()
}

#[test]
fn etcd_store_keeps_the_store_contract() {
    let Some(lab) = lab() else { return };
    let cluster = lab.etcd(3);
    let cfg = config(&cluster, &prefix());
    inside(&cluster, move || {
        let store = EtcdStore::connect(cfg).unwrap();
        contract::run(&store);
    });
}

fn add_host_and_network(ctl: &Controller) {
    ctl.mutate(|m| {
        let mut ch = m.add_host(Host {
            name: "h1".into(),
            dpid: daolinet_policy::addr::Dpid(1),
            ip: "192.168.0.1".parse().unwrap(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            uplink_port: 1,
            local_mac: None,
        })?;
        ch.extend(m.add_network(NetworkSpec {
            name: "n".into(),
            subnet: "10.0.0.0/16".parse().unwrap(),
            gateway: None,
            tenant: None,
            nat_out: None,
        })?);
        Ok(ch)
    })
    .unwrap();
}

/// Three controllers on one etcd cluster: concurrent writes on all three
/// (each allocating addresses from the same network and pool, the worst
/// case for lost updates) all land, no address is handed out twice, and
/// every controller ends with the model that is in etcd.
#[test]
fn three_controllers_converge_without_losing_updates() {
    let Some(lab) = lab() else { return };
    let mut cluster = lab.etcd(3);
    let prefix = prefix();
    let cfgs: Vec<EtcdConfig> = (0..3)
        .map(|i| {
            let mut c = config(&cluster, &prefix);
            // Each controller prefers another member.
            c.endpoints.rotate_left(i);
            c
        })
        .collect();
    let ctls: Vec<Arc<Controller>> = inside(&cluster, move || {
        cfgs.into_iter()
            .map(|c| {
                let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(c).unwrap());
                let ctl = Arc::new(Controller::open(store, Config::default()).unwrap());
                ctl.follow().unwrap();
                ctl
            })
            .collect()
    });
    add_host_and_network(&ctls[0]);
    // The others learn the host and network through the watch.
    assert!(eventually(Duration::from_secs(10), || ctls.iter().all(
        |c| c.snapshot().unwrap().model.networks.contains_key("n")
    )));

    const EACH: usize = 15;
    let writers: Vec<_> = ctls
        .iter()
        .enumerate()
        .map(|(w, ctl)| {
            let ctl = ctl.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let pool = ctl.pool();
                    let port = u32::try_from(10 + w * 100 + i).unwrap();
                    ctl.mutate(move |m| {
                        m.add_container(
                            ContainerSpec {
                                id: format!("c{w}-{i}"),
                                name: None,
                                network: "n".into(),
                                ip: None,
                                mac: None,
                                host: "h1".into(),
                                port,
                            },
                            pool,
                        )
                    })
                    .unwrap_or_else(|e| panic!("controller {w} write {i}: {e}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // The writers did collide (so the guards were put to work).
    let conflicts: u64 = ctls.iter().map(|c| c.metrics.store_conflicts()).sum();
    eprintln!("{conflicts} conflicting writes caught up and ran again");

    // Kill one member: the others keep the store working.
    cluster.kill9(1);
    ctls[1]
        .mutate(|m| m.create_group("after-kill", &["n".to_string()]))
        .unwrap();

    let stores_view = {
        let cfg = config(&cluster, &prefix);
        inside(&cluster, move || {
            let s = EtcdStore::connect(cfg).unwrap();
            load_model_at(&s).unwrap()
        })
    };
    let (model, rev) = stores_view;
    assert_eq!(model.containers.len(), 3 * EACH);
    assert!(model.groups.contains_key("after-kill"));
    let mut ips: Vec<_> = model.containers.values().map(|c| c.ip).collect();
    let mut pips: Vec<_> = model.containers.values().map(|c| c.physical_ip).collect();
    let mut cookies: Vec<_> = model.containers.values().map(|c| c.cookie_id).collect();
    ips.sort();
    ips.dedup();
    pips.sort();
    pips.dedup();
    cookies.sort();
    cookies.dedup();
    assert_eq!(ips.len(), 3 * EACH, "a logical IP was handed out twice");
    assert_eq!(pips.len(), 3 * EACH, "a physical IP was handed out twice");
    assert_eq!(cookies.len(), 3 * EACH, "a cookie id was handed out twice");
    assert!(
        eventually(Duration::from_secs(10), || ctls
            .iter()
            .all(|c| c.revision() == rev)),
        "revisions {:?}, store at {rev}",
        ctls.iter().map(|c| c.revision()).collect::<Vec<_>>()
    );
    for (i, c) in ctls.iter().enumerate() {
        assert_eq!(c.snapshot().unwrap().model, model, "controller {i} differs");
    }

    // A restarted member catches up and serves the same model.
    cluster.start_member(1);
    cluster.wait_healthy(Duration::from_secs(30));
    let only1 = EtcdConfig {
        endpoints: vec![cluster.endpoints()[1].clone()],
        ..config(&cluster, &prefix)
    };
    let again = inside(&cluster, move || {
        let s = EtcdStore::connect(only1).unwrap();
        load_model_at(&s).unwrap()
    });
    assert_eq!(again, (model, rev));
    drop(ctls);
}
