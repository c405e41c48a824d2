//! A real etcd cluster (Debian's etcd-server) for the tests of several
//! controllers: `n` members in a namespace of the lab's own, so their
//! fixed ports (2379 clients, 2380 peers, on 127.0.0.11, .12, ...) collide
//! with nobody; each member has its own data directory, in memory
//! (`/dev/shm`) when the machine has it; every member is stopped on drop,
//! and a failed test shows the members' log tails.
//!
//! Why in memory: etcd syncs its write-ahead log to disk on every write,
//! and a lease keep-alive waits for the leader to apply what came before
//! it. On a machine whose disk is busy (builds, other tests) a sync can
//! stall long enough for a controller's keep-alive to go unanswered past
//! its step-down limit (0.75 s with 2 s leases), and the controllers then
//! lose and re-win leadership over and over instead of serving switches.
//! Production etcd belongs on a disk; the tests measure the controllers,
//! not the test machine's disk.
//!
//! What talks to the cluster runs inside [`EtcdCluster::netns`]:
//! processes with [`crate::Netns::spawn`] / `command`, in-process clients on
//! a thread that entered it ([`crate::Netns::enter`]; threads and tokio
//! runtimes started there stay in it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::Proc;
use crate::fs::TempDir;
use crate::netns::Netns;

/// Where member data goes when the machine has it: memory.
const MEMORY_DIR: &str = "/dev/shm";

/// The programs an etcd test needs (list them in the lab's needs).
pub const ETCD_PROGRAMS: [&str; 2] = ["etcd", "etcdctl"];

#[derive(Debug)]
struct Member {
    name: String,
    ip: String,
    proc: Option<Proc>,
}

/// An etcd cluster in a namespace of its own.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    /// The members' logs.
    dir: PathBuf,
    /// The members' data directories (dropped after the members stop).
    data: TempDir,
    token: String,
    // Declared last: dropped after the members are stopped.
    netns: Netns,
}

impl EtcdCluster {
    /// Starts `n` members in `netns` with logs under `dir` (and data in
    /// memory when the machine has `/dev/shm`, else under `dir` too) and
    /// waits until every member answers (see [`crate::Lab::etcd`]).
    #[track_caller]
    pub fn start(netns: Netns, dir: PathBuf, n: usize) -> EtcdCluster {
        let data = TempDir::create(data_root(&dir));
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                ip: format!("127.0.0.{}", 11 + i),
                proc: None,
            })
            .collect();
        let mut c = EtcdCluster {
            members,
            dir,
            data,
            token: netns.name().to_string(),
            netns,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy(crate::DEADLINE);
        c
    }

    /// The namespace the members (and whatever talks to them) run in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True without members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.data.path().join(&self.members[i].name)
    }

    /// (Re)starts member `i` with its data directory as it is.
    #[track_caller]
    pub fn start_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let data = self.data_dir(i);
        let log = self.dir.join(format!("{}.log", self.members[i].name));
        let m = &self.members[i];
        let client = format!("http://{}:2379", m.ip);
        let peer = format!("http://{}:2380", m.ip);
        let data = data.to_string_lossy().into_owned();
        // Short heartbeats: etcd's shortest lease is 1.5 election
        // timeouts (rounded up to a second), so a 1 s lease is allowed and
        // a member failure elects a new etcd leader within a second.
        let args = [
            "etcd",
            "--name",
            &m.name,
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.token,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ];
        let what = format!("etcd member {} in {}", m.name, self.netns);
        let p = Proc::spawn(&mut self.netns.command(&args), &what, Some(&log));
        self.members[i].proc = Some(p);
    }

    /// SIGKILL member `i` (its data directory stays).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill9();
        }
    }

    /// Whether member `i` runs.
    pub fn running(&mut self, i: usize) -> bool {
        self.members[i].proc.as_mut().is_some_and(Proc::running)
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:2379", self.members[i].ip)
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// `etcd:URL,URL,...`, the controller's `--store` for this cluster.
    pub fn store_spec(&self) -> String {
        format!("etcd:{}", self.endpoints().join(","))
    }

    /// `etcdctl ARGS` (v3 API) against the cluster (every member's URL;
    /// etcdctl uses those that answer), in the cluster's namespace.
    pub fn etcdctl(&self, args: &[&str]) -> crate::Ran {
        self.etcdctl_at(&self.endpoints(), args)
    }

    fn etcdctl_at(&self, endpoints: &[String], args: &[&str]) -> crate::Ran {
        let eps = endpoints.join(",");
        let mut full = vec!["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", &eps];
        full.extend_from_slice(args);
        self.netns.output(&full)
    }

    /// Waits until every running member reports healthy.
    #[track_caller]
    pub fn wait_healthy(&mut self, within: Duration) {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.running(i))
            .collect();
        let running: Vec<String> = running.into_iter().map(|i| self.endpoint(i)).collect();
        let mut last = String::new();
        let ok = crate::eventually(within, || {
            let r = self.etcdctl_at(&running, &["endpoint", "health"]);
            last = format!("{}{}", r.stdout, r.stderr);
            r.ok
        });
        assert!(
            ok,
            "etcd cluster in {} not healthy after {within:?}: {last}\n{}",
            self.netns,
            self.logs()
        );
    }

    /// The members' log tails (for failure messages).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            if let Some(p) = &m.proc {
                s.push_str(&format!("--- {} ---\n{}\n", m.name, p.log_tail(20)));
            }
        }
        s
    }
}

/// The directory for the data of the cluster logged in `dir`: beside it in
/// memory (`/dev/shm/<lab dir>-<dir>`, unique as both are) when the machine
/// has `/dev/shm`, else `dir/data`.
fn data_root(dir: &Path) -> PathBuf {
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let memory = Path::new(MEMORY_DIR);
    if memory.is_dir() {
        memory.join(format!("{}-{}", name(dir.parent()), name(Some(dir))))
    } else {
        dir.join("data")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Captured by libtest and shown with the failed test.
            eprintln!(
                "--- etcd in {}: last lines of its members ---\n{}",
                self.netns,
                self.logs()
            );
        }
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}
