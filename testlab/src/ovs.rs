//! An Open vSwitch host: `ovsdb-server` and `ovs-vswitchd` with their own
//! run/db/log directory, the switch daemon inside a host namespace (so its
//! bridges and ports are that namespace's), bridges on the userspace
//! (netdev) datapath with `fail_mode=secure` and OpenFlow 1.3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::cmd::{self, Ran};
use crate::fs::TempDir;

/// The Open vSwitch binaries an [`OvsHost`] runs: list them in the test's
/// needs (`Lab::new(&OVS_NEEDS)` or with more).
pub const OVS_PROGRAMS: [&str; 6] = [
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
    "ovs-appctl",
];

/// The schema `ovsdb-tool create` needs.
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// A running Open vSwitch (both daemons), killed and removed on drop.
#[derive(Debug)]
pub struct OvsHost {
    dir: PathBuf,
    netns: String,
    // Keeps the lab's directory while the daemons use it.
    _lab_dir: Arc<TempDir>,
}

impl OvsHost {
    pub(crate) fn start(netns: &str, dir: PathBuf, lab_dir: Arc<TempDir>) -> OvsHost {
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // From here on, Drop stops whatever was started.
        let ovs = OvsHost {
            dir,
            netns: netns.to_string(),
            _lab_dir: lab_dir,
        };
        let d = ovs.dir.display().to_string();
        ovs.run(&["ovsdb-tool", "create", &format!("{d}/conf.db"), SCHEMA]);
        ovs.run(&[
            "ovsdb-server",
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--pidfile={d}/ovsdb-server.pid"),
            &format!("--log-file={d}/ovsdb-server.log"),
            &format!("--unixctl={d}/ovsdb-server.ctl"),
            "--detach",
            &format!("{d}/conf.db"),
        ]);
        ovs.vsctl(&["--no-wait", "init"]);
        ovs.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:userspace-tso-enable=true",
        ]);
        ovs.run(&[
            "ip",
            "netns",
            "exec",
            netns,
            "ovs-vswitchd",
            &ovs.db(),
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            &format!("--log-file={d}/ovs-vswitchd.log"),
            &format!("--unixctl={d}/ovs-vswitchd.ctl"),
            "--detach",
        ]);
        ovs
    }

    /// Its run/db/log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The namespace its switch daemon (and so its bridges) live in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = cmd::command(args);
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(var, &self.dir);
        }
        c
    }

    /// Run an OVS tool with this host's directories; what it did.
    #[track_caller]
    pub fn output(&self, args: &[&str]) -> Ran {
        cmd::output_of(&mut self.command(args), &args.join(" "))
    }

    /// Run an OVS tool, which must succeed; its stdout.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> String {
        let r = self.output(args);
        assert!(
            r.ok,
            "`{}` failed: {}\n{}",
            args.join(" "),
            r.stderr.trim_end(),
            r.stdout
        );
        r.stdout
    }

    fn db(&self) -> String {
        format!("unix:{}/db.sock", self.dir.display())
    }

    /// `ovs-vsctl ARGS` against this host's database.
    #[track_caller]
    pub fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db={}", self.db());
        let mut full = vec!["ovs-vsctl", db.as_str(), "--timeout=30"];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// A bridge on the netdev datapath, OpenFlow 1.3, `fail_mode=secure`,
    /// datapath id `dpid` (16 hex digits).
    #[track_caller]
    pub fn add_bridge(&self, br: &str, dpid: &str) {
        let dpid = format!("other-config:datapath-id={dpid}");
        self.vsctl(&[
            "add-br",
            br,
            "--",
            "set",
            "bridge",
            br,
            "datapath_type=netdev",
            "protocols=OpenFlow13",
            "fail_mode=secure",
            &dpid,
        ]);
    }

    /// Add interface `iface` (of the host namespace) to `br` as OpenFlow
    /// port `ofport`.
    #[track_caller]
    pub fn add_port(&self, br: &str, iface: &str, ofport: u32) {
        let req = format!("ofport_request={ofport}");
        self.vsctl(&["add-port", br, iface, "--", "set", "interface", iface, &req]);
    }

    /// Point `br` at the controller `target` (`tcp:IP:PORT`).
    #[track_caller]
    pub fn set_controller(&self, br: &str, target: &str) {
        self.vsctl(&["set-controller", br, target]);
    }

    /// Remove `br`'s controller.
    #[track_caller]
    pub fn del_controller(&self, br: &str) {
        self.vsctl(&["del-controller", br]);
    }

    /// `ovs-ofctl -O OpenFlow13 CMD BRIDGE ARGS` over the bridge's
    /// management socket; its stdout.
    #[track_caller]
    pub fn ofctl(&self, cmd: &str, br: &str, args: &[&str]) -> String {
        let target = format!("unix:{}/{br}.mgmt", self.dir.display());
        let mut full = vec!["ovs-ofctl", "-O", "OpenFlow13", cmd, target.as_str()];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// The flows of `br` (`ovs-ofctl dump-flows`).
    #[track_caller]
    pub fn dump_flows(&self, br: &str) -> String {
        self.ofctl("dump-flows", br, &[])
    }

    /// Wait until `br`'s flows satisfy `pred`, then until the datapath
    /// follows them ([`OvsHost::settle`]); the dump. Panics with the last
    /// dump after `within`.
    #[track_caller]
    pub fn wait_flows(
        &self,
        br: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let f = crate::wait_poll(what, within, || {
            let f = self.dump_flows(br);
            if pred(&f) {
                crate::Poll::Ready(f)
            } else {
                crate::Poll::Pending(f)
            }
        });
        self.settle();
        f
    }

    /// Wait until `ovs-vswitchd`'s datapath flows follow its OpenFlow
    /// tables. `dump-flows` shows a FLOW_MOD as soon as the table has it,
    /// but packets keep taking the datapath flows cached from the old table
    /// until the revalidator threads have been over them: right after a
    /// (re)connection, when OVS has just flushed the table, a packet sent
    /// in that window never reaches the controller. Each
    /// `revalidator/wait` returns when a revalidation round ends; the
    /// second one ends a round that began after the first returned, i.e.
    /// after the table changed.
    #[track_caller]
    pub fn settle(&self) {
        for _ in 0..2 {
            self.appctl(&["revalidator/wait"]);
        }
    }

    /// `ovs-appctl` against this instance's `ovs-vswitchd` (30 s timeout);
    /// its output. Panics when it fails.
    #[track_caller]
    pub fn appctl(&self, args: &[&str]) -> String {
        let ctl = format!("{}/ovs-vswitchd.ctl", self.dir.display());
        let mut full = vec!["ovs-appctl", "--timeout=30", "-t", &ctl];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// The end of `ovs-vswitchd`'s log.
    pub fn vswitchd_log(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("ovs-vswitchd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for OvsHost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of ovs-vswitchd's log ---\n{}",
                self.vswitchd_log(30)
            );
        }
        // Our own daemons, by the pids they wrote: the switch first (its
        // bridges go with it: the database goes too), then the database.
        for name in ["ovs-vswitchd", "ovsdb-server"] {
            let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{name}.pid"))) else {
                continue;
            };
            let Ok(pid) = pid.trim().parse::<u32>() else {
                continue;
            };
            cmd::signal(pid, libc::SIGTERM);
            let gone = crate::eventually(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{pid}")).exists()
            });
            if !gone {
                cmd::signal(pid, libc::SIGKILL);
                crate::eventually(Duration::from_secs(5), || {
                    !Path::new(&format!("/proc/{pid}")).exists()
                });
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
