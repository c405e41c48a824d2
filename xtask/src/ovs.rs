//! Open vSwitch hosts for the demo and the benchmarks: `ovsdb-server` and
//! `ovs-vswitchd` started inside a host namespace with a run/db/log
//! directory of their own (the cleanup kills what runs in the namespace
//! before deleting it, and removes the directory).

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cleanup;
use crate::util::{output, run as sh};

/// A running Open vSwitch in a namespace.
pub(crate) struct Ovs {
    /// The namespace its daemons (and so its bridges) live in.
    pub(crate) ns: String,
    /// Its run/db/log directory.
    pub(crate) dir: PathBuf,
}

impl Ovs {
    /// Start both daemons in `ns`; with `tso`, userspace TCP segmentation
    /// offload is on (the switch then keeps large TCP segments whole, as
    /// the kernel does).
    pub(crate) fn start(ns: &str, tso: bool) -> Result<Ovs> {
        let dir = PathBuf::from(format!("/tmp/{ns}-ovs"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        cleanup::add_path(&dir);
        let ovs = Ovs {
            ns: ns.to_string(),
            dir,
        };
        let d = ovs.dir.display().to_string();
        sh(ovs.cmd("ovsdb-tool").args([
            "create",
            &format!("{d}/conf.db"),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ]))?;
        sh(ovs.cmd("ovsdb-server").args([
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--pidfile={d}/ovsdb-server.pid"),
            &format!("--log-file={d}/ovsdb-server.log"),
            &format!("--unixctl={d}/ovsdb-server.ctl"),
            "--detach",
            &format!("{d}/conf.db"),
        ]))?;
        ovs.vsctl(&["--no-wait", "init"])?;
        if tso {
            ovs.vsctl(&[
                "--no-wait",
                "set",
                "Open_vSwitch",
                ".",
                "other_config:userspace-tso-enable=true",
            ])?;
        }
        sh(ovs.cmd("ovs-vswitchd").args([
            &ovs.db(),
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            &format!("--log-file={d}/ovs-vswitchd.log"),
            &format!("--unixctl={d}/ovs-vswitchd.ctl"),
            "--detach",
        ]))?;
        Ok(ovs)
    }

    /// `ip netns exec NS PROG` with this switch's directories.
    pub(crate) fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, prog]);
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(var, &self.dir);
        }
        c
    }

    /// The database address (`unix:DIR/db.sock`).
    pub(crate) fn db(&self) -> String {
        format!("unix:{}/db.sock", self.dir.display())
    }

    /// `ovs-vsctl --db=.. --timeout=20 ARGS`: its output.
    pub(crate) fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db={}", self.db());
        output(
            self.cmd("ovs-vsctl")
                .arg(&db)
                .arg("--timeout=20")
                .args(args),
        )
    }

    /// The `ovs-ofctl` command for bridge `br` (through its management
    /// socket): `ovs-ofctl -O OpenFlow13 CMD unix:DIR/BR.mgmt`.
    pub(crate) fn ofctl(&self, cmd: &str, br: &str) -> Command {
        let mut c = self.cmd("ovs-ofctl");
        c.args(["-O", "OpenFlow13", cmd])
            .arg(format!("unix:{}", self.mgmt(br).display()));
        c
    }

    fn mgmt(&self, br: &str) -> PathBuf {
        Path::new(&self.dir).join(format!("{br}.mgmt"))
    }
}
