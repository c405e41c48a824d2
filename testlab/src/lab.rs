//! A test's lab: its unique tag, its private directory and bpffs, and the
//! factory of namespaces, veths, agents, controllers and OVS hosts that
//! carry its tag.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::Agent;
use crate::controller::{Controller, ControllerOpts};
use crate::etcd::EtcdCluster;
use crate::fs::{Bpffs, TempDir};
use crate::netns::{Netns, Veth};
use crate::ovs::OvsHost;
use crate::skip::{require, Need};

/// One test's lab. Create it first (`let Some(lab) = Lab::new(..) else
/// { return }`) so that it drops last: the guards it hands out (declared
/// after it) are dropped before it, and it removes its directory and
/// bpffs when nothing uses them any more.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    dir: Arc<TempDir>,
    bpffs: Option<Arc<Bpffs>>,
    /// Agents created so far (each gets its own state dir).
    agents: u32,
}

impl Lab {
    /// A lab for a privileged test needing root, `ip`, and `needs`;
    /// `None` (skipped, see [`require`]) when one is missing.
    #[track_caller]
    pub fn new(needs: &[Need]) -> Option<Lab> {
        let mut all = vec![Need::Root, Need::Program("ip")];
        all.extend_from_slice(needs);
        require(&all)?;
        let tag = crate::names::fresh_tag();
        let dir = TempDir::create(std::env::temp_dir().join(format!("daolinet-{tag}")));
        Some(Lab {
            tag,
            dir: Arc::new(dir),
            bpffs: None,
            agents: 0,
        })
    }

    /// The lab's unique tag (prefix, pid, counter; 9 characters).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A unique name: tag + `suffix` (at most 6 characters, so that it
    /// fits an interface name).
    #[track_caller]
    pub fn name(&self, suffix: &str) -> String {
        crate::names::join(&self.tag, suffix)
    }

    /// The lab's private directory (removed when the lab and everything
    /// using it are gone).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The lab's directory guard, for what must keep it while it lives.
    pub(crate) fn dir_arc(&self) -> Arc<TempDir> {
        self.dir.clone()
    }

    /// A new subdirectory of the lab's directory.
    #[track_caller]
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        p
    }

    /// A new network namespace `<tag><suffix>`, `lo` up; deleted on drop.
    #[track_caller]
    #[must_use = "the namespace is deleted when the guard drops"]
    pub fn netns(&self, suffix: &str) -> Netns {
        Netns::create(&self.name(suffix))
    }

    /// Two host namespaces, `<tag>h1` and `<tag>h2`, joined by a wire:
    /// `eth0` in each, with MAC `02:00:00:00:<mac_byte>:0N` and address
    /// `<net>.N/24` on host N (`net` is three octets, e.g. `"192.168.7"`).
    #[track_caller]
    pub fn wired_hosts(&self, net: &str, mac_byte: u8) -> (Netns, Netns) {
        let h1 = self.netns("h1");
        let h2 = self.netns("h2");
        h1.ip(&[
            "link", "add", "name", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &h2,
        ]);
        for (i, h) in [(1, &h1), (2, &h2)] {
            h.ip(&[
                "link",
                "set",
                "eth0",
                "address",
                &format!("02:00:00:00:{mac_byte:02x}:0{i}"),
            ]);
            h.addr("eth0", &format!("{net}.{i}/24"));
        }
        (h1, h2)
    }

    /// A veth pair in the root namespace, `<tag><a>` <-> `<tag><b>`, both
    /// up; deleted on drop.
    #[track_caller]
    #[must_use = "the veth pair is deleted when the guard drops"]
    pub fn veth(&self, a: &str, b: &str) -> Veth {
        Veth::create(&self.name(a), &self.name(b))
    }

    /// A container namespace `<tag><suffix>` behind host namespace `host`:
    /// veth `port` (in `host`, up) to `eth0` with `ip` (`/24` unless a
    /// prefix length is given) and `mac`, up.
    #[track_caller]
    #[must_use = "the namespace is deleted when the guard drops"]
    pub fn container(&self, host: &Netns, suffix: &str, port: &str, ip: &str, mac: &str) -> Netns {
        let c = self.netns(suffix);
        host.ip(&[
            "link", "add", "name", port, "type", "veth", "peer", "name", "eth0", "netns", &c,
        ]);
        c.ip(&["link", "set", "eth0", "address", mac]);
        let cidr = if ip.contains('/') {
            ip.to_string()
        } else {
            format!("{ip}/24")
        };
        c.addr("eth0", &cidr);
        host.ip(&["link", "set", port, "up"]);
        c
    }

    /// The lab's private bpffs, mounted on first use.
    #[track_caller]
    pub fn bpffs(&mut self) -> Arc<Bpffs> {
        let tag = &self.tag;
        self.bpffs
            .get_or_insert_with(|| {
                Arc::new(Bpffs::mount(PathBuf::from(format!(
                    "/run/daolinet-{tag}-bpffs"
                ))))
            })
            .clone()
    }

    /// An agent for host namespace `host` with `run` arguments `args`, not
    /// started yet ([`Agent::start`]), with a state dir of its own.
    #[track_caller]
    pub fn agent_stopped(&mut self, host: &Netns, args: &[&str]) -> Agent {
        let bpffs = self.bpffs();
        self.agents += 1;
        Agent::new(
            &format!("{host}"),
            &format!("agent{}-{host}", self.agents),
            crate::workspace_bin("daolinet-agent"),
            self.dir.clone(),
            bpffs,
            args,
        )
    }

    /// Start `daolinet-agent run ARGS` in host namespace `host`; it
    /// answers on its control socket when this returns.
    #[track_caller]
    pub fn agent(&mut self, host: &Netns, args: &[&str]) -> Agent {
        let mut a = self.agent_stopped(host, args);
        a.start();
        a
    }

    /// Options for a controller with a fresh store directory in the lab
    /// (API and OpenFlow on `127.0.0.1:0`).
    #[track_caller]
    pub fn controller_opts(&self) -> ControllerOpts {
        let dir = self.subdir(&format!("controller-{}", crate::names::fresh_tag()));
        ControllerOpts::new(&dir)
    }

    /// Start a controller in namespace `netns`, OpenFlow on all of the
    /// namespace's addresses (kernel-chosen port), `args` added to `run`.
    #[track_caller]
    pub fn controller_in(&self, netns: &Netns, args: &[&str]) -> Controller {
        Controller::start(
            &self
                .controller_opts()
                .netns(netns)
                .listen("0.0.0.0:0")
                .args(args),
        )
    }

    /// Start an etcd cluster of `n` members in a namespace of its own
    /// (`<tag>etcd`), data in the lab's directory; it answers when this
    /// returns. List [`crate::ETCD_PROGRAMS`] in the lab's needs.
    #[track_caller]
    pub fn etcd(&self, n: usize) -> EtcdCluster {
        let dir = self.subdir(&format!("etcd-{}", crate::names::fresh_tag()));
        EtcdCluster::start(self.netns("etcd"), dir, n)
    }

    /// Start an Open vSwitch host whose switch daemon runs in `host`.
    /// List [`crate::OVS_PROGRAMS`] in the lab's needs.
    #[track_caller]
    pub fn ovs(&self, host: &Netns) -> OvsHost {
        let dir = self
            .dir
            .path()
            .join(format!("ovs-{}", crate::names::fresh_tag()));
        OvsHost::start(host, dir, self.dir.clone())
    }
}
